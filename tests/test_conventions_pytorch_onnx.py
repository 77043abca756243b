"""``pytorch_batch_norm`` and ``onnx_batch_norm``: inputs never mutated, bad input refused,
traceable under ``jax.jit`` and ``torch.compile(fullgraph=True)``, and step for step what
PyTorch's own ``nn.BatchNorm2d`` does (the goldens cover the rest, every backend)."""

from __future__ import annotations

import numpy as np
import pytest
from conformance.compare import TOLERANCES, error_in_epsilons

from bn_portable.conventions import onnx_batch_norm, pytorch_batch_norm

RNG = np.random.default_rng(20261206)
C = 3


def _x(shape=(4, C, 5, 6), dtype=np.float32, loc=0.5):
    return (loc + 2 * RNG.normal(size=shape)).astype(dtype)


def _params(dtype=np.float32):
    return [RNG.uniform(0.5, 1.5, C).astype(dtype) for _ in range(4)]


def test_pytorch_inputs_are_never_mutated():
    x = _x()
    mean, var, weight, bias = _params()
    counter = np.array(4)
    copies = [a.copy() for a in (x, mean, var, weight, bias, counter)]
    _, new_mean, new_var, new_counter = pytorch_batch_norm(
        x, mean, var, weight, bias, training=True, momentum=None, num_batches_tracked=counter
    )
    for original, copy in zip((x, mean, var, weight, bias, counter), copies):
        np.testing.assert_array_equal(original, copy)
    assert new_counter == 5 and counter == 4
    assert not np.shares_memory(new_mean, mean) and not np.shares_memory(new_var, var)


def test_onnx_inputs_are_never_mutated():
    x = _x()
    scale, b, mean, var = _params()
    copies = [a.copy() for a in (x, scale, b, mean, var)]
    onnx_batch_norm(x, scale, b, mean, var, training_mode=True)
    for original, copy in zip((x, scale, b, mean, var), copies):
        np.testing.assert_array_equal(original, copy)


def test_onnx_inference_returns_the_statistics_as_given():
    scale, b, mean, var = _params()
    _, new_mean, new_var = onnx_batch_norm(_x(), scale, b, mean, var)
    assert new_mean is mean and new_var is var


def test_untracked_statistics_stay_none_and_use_the_batch_in_evaluation():
    x = _x()
    y_eval, mean, var, counter = pytorch_batch_norm(x, None, None, training=False)
    y_train, *_ = pytorch_batch_norm(x, None, None, training=True)
    assert mean is None and var is None and counter is None
    np.testing.assert_array_equal(y_eval, y_train)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda p: pytorch_batch_norm(np.ones(3, np.float32), *p[:2]), ValueError, "rank 2"),
        (lambda p: pytorch_batch_norm(_x(), p[0], None), ValueError, "both be None"),
        (lambda p: pytorch_batch_norm(_x(), p[0][:2], p[1]), ValueError, "running_mean must have shape"),
        (lambda p: pytorch_batch_norm(_x(), p[0].astype(np.float64), p[1]), TypeError, "running_mean"),
        (lambda p: pytorch_batch_norm(_x(dtype=np.float16), p[0], p[1].astype(np.float16)),
         TypeError, "dtype"),
        (lambda p: pytorch_batch_norm(_x(), *p[:2], training=1), TypeError, "training"),
        (lambda p: pytorch_batch_norm(_x(), *p[:2], momentum="0.1"), TypeError, "momentum"),
        (lambda p: pytorch_batch_norm(_x(), *p[:2], eps=-1.0), ValueError, "eps"),
        (lambda p: pytorch_batch_norm(_x(), *p[:2], training=True, momentum=None),
         ValueError, "num_batches_tracked"),
        (lambda p: pytorch_batch_norm(_x(), *p[:2], num_batches_tracked=np.array(1.0)),
         TypeError, "num_batches_tracked"),
        (lambda p: pytorch_batch_norm(_x((1, C)), *p[:2], training=True), ValueError, "one value"),
        (lambda p: pytorch_batch_norm(_x().tolist(), *p[:2]), TypeError, "x must be an array"),
        (lambda p: onnx_batch_norm(_x(), p[0], None, *p[2:]), TypeError, "b must be an array"),
        (lambda p: onnx_batch_norm(_x(), p[0], p[1].astype(np.float64), *p[2:]), TypeError, "dtype"),
        (lambda p: onnx_batch_norm(_x(), *p[:3], p[3][:1]), ValueError, "input_var must have shape"),
        (lambda p: onnx_batch_norm(_x(), *p, training_mode=1), TypeError, "training_mode"),
        (lambda p: onnx_batch_norm(_x(), *p, epsilon=float("nan")), ValueError, "epsilon"),
    ],
)
def test_bad_inputs_name_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call(_params())


def test_another_library_is_refused():
    torch = pytest.importorskip("torch")
    mean, var = _params()[:2]
    with pytest.raises(TypeError, match="running_mean is a numpy array"):
        pytorch_batch_norm(torch.ones(4, C), mean, var)


def test_traces_under_jax_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = jnp.asarray(_x())
    mean, var, weight, bias = (jnp.asarray(a) for a in _params())
    counter = jnp.asarray(2)

    @jax.jit
    def step(x, mean, var, weight, bias, counter):
        torch_like = pytorch_batch_norm(
            x, mean, var, weight, bias, True, None, num_batches_tracked=counter
        )
        onnx_like = onnx_batch_norm(x, weight, bias, mean, var, training_mode=True)
        return torch_like, onnx_like

    (y, new_mean, _, new_counter), (y_onnx, *_) = step(x, mean, var, weight, bias, counter)
    eager = pytorch_batch_norm(x, mean, var, weight, bias, True, None, num_batches_tracked=counter)
    assert int(new_counter) == 3
    assert error_in_epsilons(np.asarray(y), np.asarray(eager[0]), "float32") <= TOLERANCES["float32"]
    assert error_in_epsilons(np.asarray(new_mean), np.asarray(eager[1]), "float32") <= 64
    assert error_in_epsilons(np.asarray(y_onnx), np.asarray(y), "float32") <= 64


@pytest.mark.home_backend("torch")
def test_compiles_with_fullgraph():
    torch = pytest.importorskip("torch")
    torch._dynamo.reset()
    x = torch.from_numpy(_x())
    mean, var, weight, bias = (torch.from_numpy(a) for a in _params())
    counter = torch.tensor(2)

    def step(x, mean, var, weight, bias, counter):
        return (
            pytorch_batch_norm(x, mean, var, weight, bias, True, None, num_batches_tracked=counter),
            onnx_batch_norm(x, weight, bias, mean, var, training_mode=True),
        )

    eager = _flat(step(x, mean, var, weight, bias, counter))  # first: imports array-api-compat's torch
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(_flat(compiled(x, mean, var, weight, bias, counter)), eager):
        if want.is_floating_point():
            assert error_in_epsilons(got.numpy(), want.numpy(), "float32") <= 64
        else:
            assert torch.equal(got, want)
    torch._dynamo.reset()


def _flat(results):
    return [leaf for group in results for leaf in group]


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum=0.1", "cumulative"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_agrees_with_torch_batchnorm2d_step_for_step(momentum, dtype):
    torch = pytest.importorskip("torch")
    torch_dtype = getattr(torch, dtype)
    module = torch.nn.BatchNorm2d(C, momentum=momentum, eps=1e-3).to(torch_dtype)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    state = [module.running_mean.clone(), module.running_var.clone(), module.num_batches_tracked.clone()]
    weight, bias = module.weight.detach().clone(), module.bias.detach().clone()
    for training in (True, True, False, True, False):
        x = torch.from_numpy(_x()).to(torch_dtype)
        module.train(training)
        with torch.no_grad():
            expected = module(x)
        y, *state = pytorch_batch_norm(
            x, state[0], state[1], weight, bias, training, momentum, 1e-3,
            num_batches_tracked=state[2],
        )
        for got, want in ((y, expected), (state[0], module.running_mean), (state[1], module.running_var)):
            assert got.dtype == want.dtype
            error = error_in_epsilons(got.float().numpy(), want.float().numpy(), dtype)
            assert error <= TOLERANCES[dtype], (training, error)
        assert torch.equal(state[2], module.num_batches_tracked)

"""``bn_portable.torch``: the nn.Module (its numbers, state, autocast, compile, DDP and validation)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="bn_portable.torch needs PyTorch, which is not installed")

import bn_portable as bn  # noqa: E402
from bn_portable.torch import BatchNorm  # noqa: E402
from torch_module_cases import _input, _perturb  # noqa: E402

pytestmark = pytest.mark.home_backend("torch")

nn = torch.nn


def test_variables_have_tensorflow_names_and_kinds():
    module = BatchNorm(3, scale=True, zero_debias_moving_mean=True)
    assert [name for name, _ in module.named_parameters()] == ["beta", "gamma"]
    assert [name for name, _ in module.named_buffers()] == [
        "moving_mean", "moving_variance", "moving_mean_biased", "local_step"
    ]
    assert all(p.requires_grad for p in module.parameters())
    renorm = BatchNorm(3, renorm=True)
    assert [name for name, _ in renorm.named_buffers()] == [
        "moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev"
    ]
    assert [name for name, _ in renorm.named_parameters()] == ["beta"]  # scale=False: TF's default


def test_absent_variables_are_none_as_in_pytorch():
    """Registered as absent, as ``nn.BatchNorm2d(affine=False)`` registers weight and bias."""
    module = BatchNorm(3, center=False)
    reference = nn.BatchNorm2d(3, affine=False)
    assert module.beta is None and module.gamma is None and reference.weight is None
    assert module.moving_stddev is None and module.local_step is None and module.skipped_steps is None
    assert list(module.parameters()) == [] and list(module.state_dict()) == ["moving_mean", "moving_variance"]
    assert module.state == bn.BatchNormState(moving_mean=module.moving_mean,
                                             moving_variance=module.moving_variance)
    module.double()  # conversions skip the absent ones
    assert module.moving_mean.dtype == torch.float64 and module.beta is None
    x = _input(dtype=torch.float64)
    y, _ = bn.batch_norm(x, center=False, data_format="NCHW")
    torch.testing.assert_close(module(x), y, rtol=0, atol=0)


def test_options_are_validated_once(monkeypatch):
    """forward uses the options __init__ validated: it never validates them again."""
    module = BatchNorm(3, scale=True, decay=0.9, epsilon=1e-4)
    reference = BatchNorm(3, scale=True, decay=0.9, epsilon=1e-4)

    def refuse(*args, **kwargs):
        raise AssertionError("forward validated the options again")

    x = _input()
    expected_train, expected_eval = reference(x), reference.eval()(x)
    for where in ("bn_portable._torch_module", "bn_portable._tf._options", "bn_portable._tf._plan"):
        monkeypatch.setattr(f"{where}.layer_options", refuse)
    torch.testing.assert_close(module(x), expected_train, rtol=0, atol=0)
    torch.testing.assert_close(module.eval()(x), expected_eval, rtol=0, atol=0)


def test_options_are_typed_read_only_and_rebuild_the_module():
    module = BatchNorm(3, scale=True, decay=0.9, epsilon=1e-4)
    assert module.options["decay"] == 0.9 and isinstance(module.options["decay"], float)
    with pytest.raises(TypeError):
        module.options["decay"] = 0.5  # read-only: forward relies on the validated values
    assert repr(module) == "BatchNorm(3, data_format='NCHW', decay=0.9, scale=True, epsilon=0.0001)"
    renorm = BatchNorm(3, renorm=True, renorm_clipping={"rmax": 3.0, "rmin": float("-inf")})
    assert renorm.options["renorm_clipping"] == {"rmax": 3.0}  # as validated
    assert "renorm_clipping={'rmax': 3.0}" in repr(renorm)
    rebuilt = BatchNorm.from_state(renorm.state, data_format=renorm.data_format, **renorm.options)
    assert rebuilt.options == renorm.options


@pytest.mark.parametrize(
    "options", [{}, {"scale": True, "fused": True}, {"zero_debias_moving_mean": True}, {"renorm": True}]
)
def test_train_and_eval_match_the_functional_core(options):
    module = _perturb(BatchNorm(3, decay=0.9, **options))
    x = _input()
    before = module.state._replace(**{f: getattr(module, f).clone() for f in module.fields})
    y, expected = bn.batch_norm(x, before, decay=0.9, data_format="NCHW", **options)
    torch.testing.assert_close(module(x), y, rtol=0, atol=0)
    for field in module.fields:
        torch.testing.assert_close(getattr(module, field), getattr(expected, field), rtol=0, atol=0)
        if field in ("moving_mean", "moving_variance"):
            assert not torch.equal(getattr(module, field), getattr(before, field))
    module.eval()
    after_training = {f: getattr(module, f).clone() for f in module.fields}
    y_eval, _ = bn.batch_norm(x, expected, decay=0.9, data_format="NCHW", is_training=False, **options)
    with torch.no_grad():
        torch.testing.assert_close(module(x), y_eval, rtol=0, atol=0)
    for field in module.fields:  # inference changes nothing
        assert torch.equal(getattr(module, field), after_training[field])


def test_nhwc_normalizes_the_last_axis():
    module = BatchNorm(6, data_format="NHWC")
    x = _input()
    y, _ = bn.batch_norm(x, data_format="NHWC")
    torch.testing.assert_close(module(x), y, rtol=0, atol=0)


def test_gradients_reach_the_parameters():
    module = _perturb(BatchNorm(3, scale=True))
    x = _input().requires_grad_(True)
    weights = _input(seed=5)
    (module(x) * weights).sum().backward()
    # Reference: PyTorch's own batch norm in training normalizes with the same
    # biased batch variance and epsilon.
    gamma = module.gamma.detach().clone().requires_grad_(True)
    beta = module.beta.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = nn.functional.batch_norm(x_ref, None, None, gamma, beta, training=True, eps=0.001)
    (y_ref * weights).sum().backward()
    torch.testing.assert_close(module.gamma.grad, gamma.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(module.beta.grad, beta.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    assert all(b.grad is None and not b.requires_grad for b in module.buffers())


@pytest.mark.parametrize("fused", [True, False])
def test_a_buffer_that_requires_grad_is_updated_without_recording(fused):
    """The statistics are copied into the buffers with autograd off where a buffer requires
    grad (an in-place copy into such a leaf would raise otherwise), and stay leaves."""
    module = _perturb(BatchNorm(3, scale=True, fused=fused))
    module.moving_variance.requires_grad_(True)
    before = module.moving_variance.detach().clone()
    module(_input().requires_grad_(True)).sum().backward()
    assert not torch.equal(module.moving_variance.detach(), before)
    assert all(b.grad_fn is None for b in module.buffers())


def test_parametrized_and_swapped_parameters_are_the_ones_used():
    """The state is read where PyTorch keeps it: a parametrization's computed gamma and
    ``torch.func.functional_call``'s swapped tensors, not the module's stored ones."""

    class Doubled(nn.Module):
        def forward(self, gamma):
            return 2.0 * gamma

    x = _input()
    plain = _perturb(BatchNorm(3, scale=True)).eval()
    parametrized = _perturb(BatchNorm(3, scale=True)).eval()
    torch.nn.utils.parametrize.register_parametrization(parametrized, "gamma", Doubled())
    torch.testing.assert_close(parametrized.state.gamma, 2.0 * plain.gamma, rtol=0, atol=0)
    with torch.no_grad():
        options = {"scale": True, "is_training": False, "data_format": plain.data_format}
        expected, _ = bn.batch_norm(x, plain.state._replace(gamma=2.0 * plain.gamma), **options)
        torch.testing.assert_close(parametrized(x), expected, rtol=0, atol=0)
        swapped = {"gamma": 3.0 * plain.gamma, "moving_mean": plain.moving_mean + 1.0}
        y = torch.func.functional_call(plain, swapped, (x,))
        state = plain.state._replace(gamma=swapped["gamma"], moving_mean=swapped["moving_mean"])
        torch.testing.assert_close(y, bn.batch_norm(x, state, **options)[0], rtol=0, atol=0)


def test_state_dict_round_trip():
    source = BatchNorm(3, scale=True, decay=0.5, zero_debias_moving_mean=True)
    _perturb(source)
    for seed in range(3):
        source(_input(seed=seed))
    state_dict = source.state_dict()
    assert set(state_dict) == {
        "beta", "gamma", "moving_mean", "moving_variance", "moving_mean_biased", "local_step"
    }
    target = BatchNorm(3, scale=True, decay=0.5, zero_debias_moving_mean=True)
    target.load_state_dict(state_dict)
    x = _input(seed=9)
    source.eval(), target.eval()
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    source.train(), target.train()
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    for name, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], value, rtol=0, atol=0)


def test_load_batch_norm_state_and_from_state():
    source = _perturb(BatchNorm(3, scale=True))
    numpy_state = source.state._replace(
        **{f: getattr(source, f).detach().numpy().copy() for f in source.fields}
    )
    numpy_state.gamma.flags.writeable = False  # as JAX arrays and memory maps come: copied, no warning
    rebuilt = BatchNorm.from_state(numpy_state, scale=True)
    for field in source.fields:
        assert torch.equal(getattr(rebuilt, field), getattr(source, field))
    assert isinstance(rebuilt.gamma, nn.Parameter)
    target = BatchNorm(3, scale=True)
    target.load_batch_norm_state(numpy_state)
    alias = BatchNorm(3, scale=True)
    alias.load_state(numpy_state)  # the earlier name, kept as an alias
    for field in source.fields:
        assert torch.equal(getattr(target, field), getattr(source, field))
        assert torch.equal(getattr(alias, field), getattr(source, field))
    with pytest.raises(ValueError, match="fields"):
        BatchNorm(3).load_batch_norm_state(numpy_state)  # scale=False has no gamma
    wrong = numpy_state._replace(moving_variance=numpy_state.moving_variance[:2])
    before = rebuilt.moving_mean.clone()
    with pytest.raises(ValueError, match=r"state.moving_variance must have shape \(3,\)"):
        rebuilt.load_batch_norm_state(wrong)
    assert torch.equal(rebuilt.moving_mean, before)  # nothing copied
    with pytest.raises(TypeError, match="state must be a BatchNormState"):
        rebuilt.load_state({"moving_mean": numpy_state.moving_mean})
    with pytest.raises(ValueError, match=r"state\.moving_mean must be a floating array"):
        BatchNorm.from_state(numpy_state._replace(moving_mean=numpy_state.moving_mean.astype(int)))


def test_state_dict_version_2_loads_version_1():
    """Version 1 (before the typed options) has the same entries: it loads as it is."""
    source = _perturb(BatchNorm(3, scale=True, renorm=True))
    state_dict = source.state_dict()
    assert state_dict._metadata[""]["version"] == BatchNorm._version == 2
    state_dict._metadata[""]["version"] = 1
    target = nn.Sequential(BatchNorm(3, scale=True, renorm=True))
    target.load_state_dict({f"0.{k}": v for k, v in state_dict.items()})
    for name, value in source.state_dict().items():
        assert torch.equal(target[0].state_dict()[name], value)
    with pytest.raises(RuntimeError, match="from_torch"):  # PyTorch's names: say how to convert
        BatchNorm(3, scale=True).load_state_dict(nn.BatchNorm2d(3).state_dict())


def test_half_precision_input_keeps_float32_variables():
    """TensorFlow's Keras paths keep float32 variables for float16/bfloat16 input."""
    module = BatchNorm(3, scale=True, fused=True)
    x = _input(dtype=torch.bfloat16)
    y, expected = bn.batch_norm(x, module.state, scale=True, fused=True, data_format="NCHW")
    torch.testing.assert_close(module(x), y, rtol=0, atol=0)
    assert y.dtype == torch.bfloat16 and module.moving_mean.dtype == torch.float32
    torch.testing.assert_close(module.moving_variance, expected.moving_variance, rtol=0, atol=0)


def test_autocast_does_not_change_the_numbers():
    module = BatchNorm(3, scale=True)
    reference = BatchNorm(3, scale=True)
    conv = nn.Conv2d(2, 3, 3)
    x = _input((4, 2, 7, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = conv(x)
        y = module(features)
        y_float = module.eval()(_input())
    assert features.dtype == torch.bfloat16  # the convolution was autocast...
    expected = reference(features)  # ...the batch norm runs as outside autocast
    assert y.dtype == torch.bfloat16 and module.moving_mean.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(module.moving_variance, reference.moving_variance, rtol=0, atol=0)
    assert y_float.dtype == torch.float32
    torch.testing.assert_close(y_float, reference.eval()(_input()), rtol=0, atol=0)


# A warning Dynamo itself raises while tracing: its wrapping of intermediate
# tensors reads their .grad. (test_torch_module_compile.py checks, in a fresh
# interpreter, that compiling a model prints no warning.)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
# Dynamo itself instantiates autograd.Function classes while tracing them.
@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be")
@pytest.mark.parametrize("options", [{"scale": True}, {"scale": True, "fused": True}])
def test_torch_compile(options):
    eager = _perturb(BatchNorm(3, decay=0.8, **options))
    compiled_module = _perturb(BatchNorm(3, decay=0.8, **options))
    compiled = torch.compile(compiled_module, backend="aot_eager", fullgraph=True)
    for seed in range(2):
        x = _input(seed=seed)
        y_eager, y_compiled = eager(x), compiled(x)
        torch.testing.assert_close(y_compiled, y_eager, rtol=1e-6, atol=1e-6)
        (y_eager * x).sum().backward()
        (y_compiled * x).sum().backward()
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(compiled_module.state_dict()[name], value, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled_module.gamma.grad, eager.gamma.grad, rtol=1e-5, atol=1e-5)


#: DDP around the module in a process of its own: a gloo process group is
#: process-wide state, and tearing one down under a live DDP reducer can block
#: in gloo's thread join, which must not hang the test process.
_DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from torch import nn
sys.path[:0] = sys.argv[2:]
from test_torch_module import BatchNorm, _input, _perturb

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
plain = _perturb(BatchNorm(3, scale=True))
wrapped_module = _perturb(BatchNorm(3, scale=True))
wrapped = nn.parallel.DistributedDataParallel(wrapped_module)
x = _input()
(plain(x) * x).sum().backward()
(wrapped(x) * x).sum().backward()
torch.testing.assert_close(wrapped_module.gamma.grad, plain.gamma.grad)
torch.testing.assert_close(wrapped_module.moving_variance, plain.moving_variance)
print("ddp ok", flush=True)
os._exit(0)  # skip the process group's teardown: the result is in
"""


@pytest.mark.scaleout
def test_ddp_single_process(tmp_path):
    import os
    import subprocess
    import sys

    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("this PyTorch build has no torch.distributed")
    here = os.path.dirname(os.path.abspath(__file__))
    completed = subprocess.run(
        [sys.executable, "-c", _DDP_SCRIPT, str(tmp_path / "store"), here, *sys.path],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0 and "ddp ok" in completed.stdout, completed.stderr[-4000:]


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"num_features": 0}, ValueError, "num_features"),
        ({"num_features": 3.0}, TypeError, "num_features"),
        ({"num_features": 3, "is_training": False}, TypeError, r"\.train\(\) or \.eval\(\)"),
        ({"num_features": 3, "momentum": 0.1}, TypeError, "unknown option 'momentum'"),
        ({"num_features": 3, "decay": 2.0}, ValueError, "decay"),
        ({"num_features": 3, "data_format": "NCDHW"}, ValueError, "data_format"),
        ({"num_features": 3, "dtype": torch.int32}, TypeError, "dtype must be a floating"),
        ({"num_features": 3, "state": None}, TypeError, "load_batch_norm_state"),
        ({"num_features": 3, "scale": 1}, TypeError, "scale"),
    ],
)
def test_bad_arguments(arguments, error, match):
    with pytest.raises(error, match=match):
        BatchNorm(**arguments)


def test_wrong_input_changes_nothing():
    module = BatchNorm(3)
    before = module.moving_mean.clone()
    with pytest.raises(ValueError, match=r"state.beta must have shape \(5,\)"):
        module(_input((4, 5, 2, 2)))  # 5 channels, the module has 3
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        module([1.0, 2.0])
    renorm = BatchNorm(3, renorm=True)
    with pytest.raises(ValueError, match="batch_weights"):
        renorm(_input(), torch.ones(4))
    assert torch.equal(module.moving_mean, before)

"""``torch.compile(fullgraph=True)`` traces every layer path, and compiled equals eager.

``fullgraph=True`` turns any graph break into an error, so each test also
proves that the call reads no array value on the host (``.item()``,
``.tolist()``, ``bool(tensor)`` all break the graph) and that the fast-path
dispatch is traceable. Compiled and eager results are compared within the
conformance suite's tolerance (``conformance.compare``).

Most cases use the ``aot_eager`` backend (dynamo and AOT autograd, forward and
backward graphs, without code generation: seconds per case); a few use the
default inductor backend, whose generated kernels may reorder the float
arithmetic. Only run where the torch backend is selected (``--backend torch``
or no ``--backend``; the ``home_backend`` marker): the other backends' sessions
would repeat the same compilations.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conformance.compare import TOLERANCES, error_in_epsilons

import bn_portable as bn

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.home_backend("torch"),
    # dynamo itself instantiates autograd.Function classes while tracing them
    pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be"),
    # inductor's own use of a deprecated TorchScript decorator
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated"),
]


@pytest.fixture(autouse=True)
def _fresh_compiler():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _assert_close(actual, expected):
    for a, e in zip(_leaves(actual), _leaves(expected)):
        if e is None:
            assert a is None
            continue
        assert a.dtype == e.dtype and a.shape == e.shape
        if not e.is_floating_point():
            assert torch.equal(a, e)
            continue
        dtype = str(e.dtype).removeprefix("torch.")
        error = error_in_epsilons(_np(a), _np(e), dtype)
        assert error <= TOLERANCES[dtype], (dtype, error)


def _leaves(value):
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _np(tensor):
    return tensor.detach().to(torch.float32).numpy().astype(np.float64)


def _compiled(function, backend="aot_eager"):
    return torch.compile(function, fullgraph=True, backend=backend)


RNG = np.random.default_rng(20261201)


def _x(shape, mean=0.5):
    return torch.from_numpy(RNG.normal(mean, 2.0, shape).astype(np.float32))


#: (id, shape, batch_norm options): every implementation TensorFlow's layer has.
LAYER_CASES = [
    ("keras-fused-NCHW", (4, 3, 5, 6), dict(fused=True, data_format="NCHW", scale=True)),
    ("keras-fused-NHWC", (4, 5, 6, 3), dict(fused=True, scale=True)),
    ("slim-fused-rank2", (16, 6), dict(fused=True, scale=True)),
    ("slim-fused-zero-debias", (4, 5, 6, 3), dict(fused=True, zero_debias_moving_mean=True)),
    ("keras-layer-rank3", (4, 7, 6), dict(scale=True)),
    ("keras-layer-NCHW", (4, 3, 5, 6), dict(data_format="NCHW", scale=True)),
    ("renorm", (4, 5, 6, 3), dict(renorm=True, scale=True, renorm_clipping={"rmax": 2.0})),
    ("legacy-zero-debias", (4, 5, 6, 3), dict(zero_debias_moving_mean=True, scale=True)),
    ("legacy-weighted", (4, 5, 6, 3), dict(scale=True, weighted=True)),
]


def _layer_arguments(shape, options, is_training):
    options = dict(options)
    weights = torch.from_numpy(RNG.uniform(0.5, 1.5, shape[0]).astype(np.float32))
    if options.pop("weighted", False):
        options["batch_weights"] = weights
    options["is_training"] = is_training
    x = _x(shape)
    _, state = bn.batch_norm(x, None, **options)
    # a moved state, so that inference does not normalize with zeros and ones
    _, state = bn.batch_norm(_x(shape, mean=2.0), state, **{**options, "is_training": True})
    return x, state, options


@pytest.mark.parametrize("is_training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize(("shape", "options"), [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES])
def test_compiled_batch_norm_with_autograd_equals_eager(shape, options, is_training):
    x, state, options = _layer_arguments(shape, options, is_training)
    dy = _x(shape)

    def step(x, state):
        return bn.batch_norm(x, state, **options)

    results = []
    for function in (step, _compiled(step)):
        xg = x.clone().requires_grad_()
        parameters = {
            name: getattr(state, name).clone().requires_grad_()
            for name in ("gamma", "beta")
            if getattr(state, name) is not None
        }
        y, new_state = function(xg, state._replace(**parameters))
        grads = torch.autograd.grad(y, [xg, *parameters.values()], dy)
        results.append((y, tuple(new_state), grads))
    _assert_close(results[1], results[0])


@pytest.mark.parametrize(("shape", "options"), [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES])
def test_compiled_batch_norm_vjp_equals_eager(shape, options):
    x, state, options = _layer_arguments(shape, options, True)
    dy = _x(shape)

    def step(x, state, dy):
        y, new_state, vjp = bn.batch_norm_vjp(x, state, **options)
        return y, new_state, vjp(dy)

    _assert_close(_compiled(step)(x, state, dy), step(x, state, dy))


@pytest.mark.parametrize("is_training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize(
    ("shape", "data_format", "memory"),
    [
        ((4, 3, 5, 6), "NCHW", torch.contiguous_format),
        ((4, 3, 5, 6), "NCHW", torch.channels_last),  # a channels-last model's tensors
        ((4, 5, 6, 3), "NHWC", torch.contiguous_format),
        ((2, 3, 4, 5, 3), "NDHWC", torch.contiguous_format),
    ],
    ids=["NCHW", "NCHW-channels-last", "NHWC", "NDHWC"],
)
def test_compiled_fused_batch_norm_equals_eager(shape, data_format, memory, is_training):
    channels = shape[1] if data_format.startswith("NC") else shape[-1]
    x = _x(shape).contiguous(memory_format=memory)
    scale, offset, mean = (_x((channels,)) for _ in range(3))
    variance = torch.from_numpy(RNG.uniform(0.5, 2.0, channels).astype(np.float32))

    def step(x):
        return bn.fused_batch_norm(
            x, scale, offset, mean, variance, data_format=data_format, is_training=is_training,
            exponential_avg_factor=0.5,
        )

    _assert_close(_compiled(step)(x), step(x))


def test_compiled_moments_equal_eager():
    x = _x((4, 5, 6, 3), mean=100.0)
    weights = torch.from_numpy(RNG.uniform(0.0, 1.0, (4, 1, 1, 1)).astype(np.float32))

    def step(x, weights):
        return (
            bn.moments(x, [0, 1, 2]),
            bn.moments(x, [0, 1, 2], keepdims=True, shift=x[0, 0, 0]),
            bn.weighted_moments(x, [0, 1, 2], weights),
        )

    _assert_close(_compiled(step)(x, weights), step(x, weights))


@pytest.mark.parametrize(
    ("shape", "data_format"), [((8, 4, 6, 6), "NCHW"), ((64, 16), "NHWC")], ids=["NCHW", "MLP"]
)
def test_inductor_training_step_equals_eager(shape, data_format):
    """The default backend: generated kernels, forward and backward."""
    x = _x(shape)
    options = dict(fused=True, scale=True, data_format=data_format)
    _, state = bn.batch_norm(x, None, **options)
    weights = _x(shape)  # a loss whose gradient does not cancel (unlike Σ y², fixed by BN)

    def step(x, gamma, beta):
        y, new_state = bn.batch_norm(x, state._replace(gamma=gamma, beta=beta), **options)
        return (y * weights).sum(), new_state

    results = []
    for function in (step, _compiled(step, backend="inductor")):
        leaves = [t.clone().requires_grad_() for t in (x, state.gamma, state.beta)]
        loss, new_state = function(*leaves)
        results.append((loss, tuple(new_state), torch.autograd.grad(loss, leaves)))
    _assert_close(results[1], results[0])


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_inductor_statistics_are_accurate_on_ill_conditioned_batches(data_format):
    """Compiled, the training statistics are the compiler's own reductions (not PyTorch's
    statistics kernel, which it can only call as it is), summed in float64: within 4 ε
    (float32's 2⁻²³) of the float64 truth for 2¹⁶ values per channel with the mean 10⁴
    times the spread. Measured on such batches: 0.4 ε (mean) and 0.9 ε (variance),
    compiled, NCHW and NHWC; with the compiler's float32 sums 4–6 ε and 216 ε (NCHW) or
    529 ε (NHWC); TensorFlow 2.15's CPU kernel (NHWC, run in the golden environment on a
    batch of the same shape, mean and spread): 3.0 and 181 ε."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 8, 64, 64, generator=generator) + 1e4
    axes = (0, 2, 3)
    if data_format == "NHWC":
        x, axes = x.permute(0, 2, 3, 1).contiguous(), (0, 1, 2)
    scale, offset = torch.ones(8), torch.zeros(8)

    def statistics(x):
        _, mean, variance = bn.fused_batch_norm(x, scale, offset, data_format=data_format)
        return mean, variance

    mean, variance = _compiled(statistics, backend="inductor")(x)
    x64 = x.double()
    true_mean = x64.mean(axes)
    true_variance = x64.var(axes, correction=1)
    eps = 2.0**-23
    assert ((mean.double() - true_mean).abs() / (true_mean.abs() * eps)).max() <= 4
    assert ((variance.double() - true_variance).abs() / (true_variance * eps)).max() <= 4


def test_inductor_moments_are_accurate_on_ill_conditioned_batches():
    """``moments`` compiled: its sums are widened to float64 while the compiler traces
    (``_lib/_sums.py``), so its two-pass variance is within 4 ε of the float64 truth with
    the mean 10⁴ times the spread (measured 1.9 ε; with the compiler's float32 sums 212 ε,
    eagerly 16.5 ε)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 8, 64, 64, generator=generator) + 1e4
    mean, variance = _compiled(lambda x: bn.moments(x, axes=[0, 2, 3]), backend="inductor")(x)
    x64 = x.double()
    true_mean, true_variance = x64.mean((0, 2, 3)), x64.var((0, 2, 3), correction=0)
    eps = 2.0**-23
    assert ((mean.double() - true_mean).abs() / (true_mean.abs() * eps)).max() <= 4
    assert ((variance.double() - true_variance).abs() / (true_variance * eps)).max() <= 4


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_symbolic_batch_sizes_trace_whole(fast):
    """Called with a second batch size, the compiler recompiles with a symbolic
    batch dimension, so the element count, and the Bessel factor made from it,
    are symbolic: the layer and the fused op still trace with no break and equal
    eager for each batch size."""
    options = dict(fused=True, scale=True, data_format="NHWC")
    _, state = bn.batch_norm(_x((6, 5)), None, **options)

    def step(x):
        y, new_state = bn.batch_norm(x, state, **options)
        fused = bn.fused_batch_norm(x.reshape(x.shape[0], 1, 1, -1), state.gamma, state.beta)
        return y, tuple(new_state), fused

    compiled = _compiled(step)
    with bn.fast_paths(fast):
        for rows in (6, 9, 12):
            x = _x((rows, 5))
            _assert_close(compiled(x), step(x))


def test_fast_path_switch_is_read_when_compiling():
    """Inside a compiled function the switch is a constant of the trace (documented)."""
    x = _x((4, 3, 5, 6))
    scale, offset = torch.ones(3), torch.zeros(3)
    calls = []
    from bn_portable._native import Kernel, _torch

    original = _torch.KERNELS[Kernel.FUSED_TRAINING]

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    step = _compiled(lambda x: bn.fused_batch_norm(x, scale, offset, data_format="NCHW")[0])
    try:
        _torch.KERNELS[Kernel.FUSED_TRAINING] = counting
        with bn.fast_paths(False):
            step(x)
        assert not calls  # traced with the fast paths off: the generic kernel
        torch._dynamo.reset()
        with bn.fast_paths(True):
            step(x)
        assert calls  # traced again with them on
    finally:
        _torch.KERNELS[Kernel.FUSED_TRAINING] = original


_FIRST_CALL_SCRIPT = """
import sys
import torch
import bn_portable as bn
assert "array_api_compat.torch" not in sys.modules  # what the first call imports
x = torch.randn(4, 3, 5, 6)
scale, offset, mean, variance = torch.randn(3), torch.randn(3), torch.randn(3), torch.rand(3) + 0.5
step = torch.compile(
    lambda x: bn.fused_batch_norm(x, scale, offset, mean, variance, data_format="NCHW", is_training=False)[0],
    fullgraph=True, backend="aot_eager",
)
print("compiled:", tuple(step(x).shape))
"""


def test_a_compiled_function_may_make_the_first_call_of_a_process():
    """The first call imports array-api-compat's PyTorch namespace; traced, it must not break
    the graph (a fresh interpreter: in this one, earlier tests imported it)."""
    from bn_portable._lib import _compat

    if _compat._PARENT:
        pytest.skip("a vendored copy imports the wrapper by name, untraceably (docs/vendoring.md)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    completed = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL_SCRIPT], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "compiled: (4, 3, 5, 6)" in completed.stdout


def test_the_switch_is_marked_as_the_public_decorator_marks_a_constant():
    """``_torch.enabled`` carries what ``torch.compiler.assume_constant_result`` sets, set
    without that decorator's import of the compiler (the test above traces it)."""
    from bn_portable._native import _torch

    def probe() -> bool:
        return True

    marks = vars(torch.compiler.assume_constant_result(probe))
    assert marks
    for name, value in marks.items():
        assert getattr(_torch.enabled, name, None) == value, name


_EAGER_SCRIPT = """
import sys
import torch
import bn_portable as bn
from bn_portable.torch import BatchNorm
x = torch.randn(4, 3, 5, 6, requires_grad=True)
for fused in (True, False):
    y, state = bn.batch_norm(x, data_format="NCHW", fused=fused, scale=True)
    module = BatchNorm.from_state(state, data_format="NCHW", fused=fused, scale=True)
    module(x).sum().backward()
print("compiler imported:", "torch._dynamo" in sys.modules)
"""


def test_eager_calls_do_not_import_the_compiler():
    """Eager programs never pay for importing ``torch._dynamo`` (seconds on a small CPU)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    completed = subprocess.run(
        [sys.executable, "-c", _EAGER_SCRIPT], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "compiler imported: False" in completed.stdout

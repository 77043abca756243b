"""The PyTorch fast paths of the forward (statistics, normalization) against the generic kernels.

The tolerances are those of ``fast_paths_cases``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import fast_paths_cases
from bn_portable._kernels import _normalize
from fast_paths_cases import (
    EPSILON,
    LAYOUTS,
    RNG,
    TORCH_DTYPES,
    _assert_statistics_close,
    _assert_y_close,
    _data,
    _np,
    _reference,
    _small_torch_blocks,
    _to_torch,
    _torch_xp,
    _ulps_of_scale,
    torch_fused_formula,
)

# The fixtures of fast_paths_cases this module uses (pytest finds them by these names).
_seed_per_test = fast_paths_cases._seed_per_test
torch_fast = fast_paths_cases.torch_fast

# The channels-last training path: small batches run PyTorch's kernel as it is,
# larger ones get their statistics from torch.sum first.
TORCH_LAYOUTS = [
    *LAYOUTS[:8],
    pytest.param((4, 20, 20, 6), 3, id="NHWC-1600-rows"),
    pytest.param((2, 4, 8, 10, 7), 4, id="NDHWC-1280-rows"),
]


@pytest.mark.parametrize("block_elements", [None, 64], ids=["whole", "blocks"])
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize(("shape", "channel"), TORCH_LAYOUTS)
def test_torch_fused_training_matches_generic(torch_fast, monkeypatch, shape, channel, dtype, block_elements):
    _small_torch_blocks(monkeypatch, torch_fast, block_elements)
    xp = _torch_xp()
    x, scale, offset = _data(shape, channel, "float32")
    xt, st, ot = _to_torch(x, dtype), _to_torch(scale, "float32"), _to_torch(offset, "float32")
    fast = torch_fast.fused_training_core(xt, st, ot, EPSILON, channel, xp=xp)
    assert fast is not NotImplemented
    generic = _normalize.fused_training_core.generic(xt, st, ot, EPSILON, channel, xp=xp)
    y, mean, variance, count = fast
    assert count == generic[3]
    assert y.dtype == xt.dtype and tuple(y.shape) == shape
    assert mean.dtype == variance.dtype == generic[1].dtype
    _assert_statistics_close(
        _np(mean), _np(generic[1]), _np(variance), _np(generic[2]), _np(xt), channel
    )
    _assert_y_close(_np(y), _np(generic[0]), _np(xt), scale, offset, channel, dtype)


@pytest.mark.parametrize("block_elements", [None, 64], ids=["whole", "blocks"])
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize(("shape", "channel"), TORCH_LAYOUTS)
def test_torch_fused_inference_matches_generic(torch_fast, monkeypatch, shape, channel, dtype, block_elements):
    _small_torch_blocks(monkeypatch, torch_fast, block_elements)
    xp = _torch_xp()
    x, scale, offset = _data(shape, channel, "float32")
    channels = shape[channel]
    mean = RNG.normal(1.0, 1.0, channels).astype(np.float32)
    variance = RNG.uniform(0.5, 4.0, channels).astype(np.float32)
    args = [_to_torch(v, "float32") for v in (scale, offset, mean, variance)]
    xt = _to_torch(x, dtype)
    fast = torch_fast.fused_inference(xt, *args, EPSILON, channel, xp=xp)
    assert fast is not NotImplemented
    generic = _normalize.fused_inference.generic(xt, *args, EPSILON, channel, xp=xp)
    assert fast.dtype == generic.dtype and fast.shape == generic.shape
    scale_t, offset_t, mean_t, variance_t = args
    np.testing.assert_array_equal(
        _np(fast), _np(torch_fused_formula(xt, mean_t, variance_t, scale_t, offset_t, channel))
    )
    if xt.stride(channel) != 1:  # the generic kernel's operations in its order: bit for bit
        np.testing.assert_array_equal(_np(fast), _np(generic))


def test_torch_large_channels_last_batch_keeps_accurate_statistics(torch_fast):
    """PyTorch's own channels-last kernel drifts by tens of ulps here; the fast path must not."""
    xp = _torch_xp()
    shape, channel = (16, 40, 40, 32), 3
    x, scale, offset = _data(shape, channel, "float32", mean=4.0)
    y, mean, variance, _ = torch_fast.fused_training_core(
        _to_torch(x, "float32"),
        _to_torch(scale, "float32"),
        _to_torch(offset, "float32"),
        EPSILON,
        channel,
        xp=xp,
    )
    mean64, variance64, y64 = _reference(x, scale, offset, channel)
    eps = float(np.finfo(np.float32).eps)
    magnitude = np.mean(np.abs(x.astype(np.float64)), axis=(0, 1, 2))
    assert np.all(np.abs(_np(mean) - mean64) <= 2 * eps * magnitude)
    assert np.all(np.abs(_np(variance) - variance64) <= 4 * eps * variance64)
    assert _ulps_of_scale(_np(y), y64, np.float32) <= 4


@pytest.mark.parametrize(("shape", "channel"), [((4, 3, 5, 7), 1), ((4, 5, 7, 3), 3), ((64, 6), 1)])
def test_torch_large_mean_keeps_tensorflow_formula(torch_fast, shape, channel):
    """|μ|/σ = 1000: a folded ``x·α + (β − μ·α)`` would lose thousands of ulps; this must not."""
    xp = _torch_xp()
    x, scale, offset = _data(shape, channel, "float32", mean=1000.0, spread=1.0)
    args = (_to_torch(x, "float32"), _to_torch(scale, "float32"), _to_torch(offset, "float32"))
    y, mean, variance, _ = torch_fast.fused_training_core(*args, EPSILON, channel, xp=xp)
    generic = _normalize.fused_training_core.generic(*args, EPSILON, channel, xp=xp)
    _assert_statistics_close(
        _np(mean), _np(generic[1]), _np(variance), _np(generic[2]), x, channel
    )
    # inference with the batch's own statistics gives training's y bit for bit
    # (tf-slim's testNoneUpdatesCollectionIsTrainingVariableFusedNCHW relies on it)
    inferred = torch_fast.fused_inference(*args, mean, variance, EPSILON, channel, xp=xp)
    np.testing.assert_array_equal(_np(inferred), _np(y))
    # ... which is TensorFlow's formula with those statistics (centred first), bit for bit
    np.testing.assert_array_equal(_np(y), _np(torch_fused_formula(args[0], mean, variance, *args[1:], channel)))


def test_torch_inference_reads_statistics_rewritten_behind_the_version_counter(torch_fast):
    """Statistics rewritten through ``.data`` or a NumPy view: no stale answer can be used."""
    torch = pytest.importorskip("torch")
    xp = _torch_xp()
    x, scale, offset = _data((4, 3, 5, 7), 1, "float32", mean=1000.0, spread=1.0)
    args = (_to_torch(x, "float32"), _to_torch(scale, "float32"), _to_torch(offset, "float32"))
    buffer = np.zeros(3, np.float32)
    mean, variance = torch.from_numpy(buffer), torch.ones(3)
    torch_fast.fused_inference(*args, mean, variance, EPSILON, 1, xp=xp)
    for rewrite in (lambda: buffer.fill(1000.0), lambda: mean.data.copy_(torch.full((3,), 999.5))):
        rewrite()
        fast = torch_fast.fused_inference(*args, mean, variance, EPSILON, 1, xp=xp)
        generic = _normalize.fused_inference.generic(*args, mean, variance, EPSILON, 1, xp=xp)
        np.testing.assert_array_equal(_np(fast), _np(generic))


@pytest.mark.parametrize(("shape", "channel"), [((16, 6), 1), ((8, 5, 6), 2), ((8, 6, 5), 1)])
def test_torch_fast_paths_take_rank_2_and_3(torch_fast, shape, channel):
    xp = _torch_xp()
    x, scale, offset = _data(shape, channel, "float32")
    args = (_to_torch(x, "float32"), _to_torch(scale, "float32"), _to_torch(offset, "float32"))
    fast = torch_fast.fused_training_core(*args, EPSILON, channel, xp=xp)
    assert fast is not NotImplemented
    generic = _normalize.fused_training_core.generic(*args, EPSILON, channel, xp=xp)
    _assert_y_close(_np(fast[0]), _np(generic[0]), x, scale, offset, channel, "float32")


def test_torch_declines_single_value_channels(torch_fast):
    xp = _torch_xp()
    x, scale, offset = _data((1, 1, 1, 4), 3, "float32")
    args = (_to_torch(x, "float32"), _to_torch(scale, "float32"), _to_torch(offset, "float32"))
    assert torch_fast.fused_training_core(*args, EPSILON, 3, xp=xp) is NotImplemented


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_normalize_is_bit_identical(torch_fast, dtype):
    xp = _torch_xp()
    x, _, _ = _data((4, 6, 5, 3), 3, "float32")
    mean, variance, offset, scale = (
        _to_torch(RNG.normal(size=3), dtype),
        _to_torch(RNG.uniform(0.5, 2, size=3), dtype),
        _to_torch(RNG.normal(size=3), dtype),
        _to_torch(RNG.uniform(0.5, 2, size=3), dtype),
    )
    xt = _to_torch(x, dtype)
    fast = torch_fast.normalize(xt, mean, variance, offset, scale, EPSILON, xp=xp)
    generic = _normalize.normalize.generic(xt, mean, variance, offset, scale, EPSILON, xp=xp)
    assert fast.dtype == generic.dtype
    np.testing.assert_array_equal(_np(fast), _np(generic))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "rows"])
def test_torch_normalize_keeps_tensorflows_cancellation_where_x_is_the_mean(torch_fast, layout):
    """One value per channel (x = mean, variance 0) and |mean·inv| ≫ |offset|: TensorFlow's
    ``round(x·inv) + round(offset − round(mean·inv))`` cancels exactly; a fused
    multiply-add (PyTorch's own inference kernel) keeps mean·inv's rounding error
    instead, up to three times the conformance tolerance on the golden cases."""
    torch = pytest.importorskip("torch")
    xp = _torch_xp()
    channels = 64
    shape = {"NCHW": (1, channels, 1, 1), "NHWC": (1, 1, 1, channels), "rows": (1, channels)}[layout]
    rng = np.random.default_rng(11)
    mean = rng.normal(0.0, 300.0, channels).astype(np.float32)
    offset = rng.normal(0.0, 0.1, channels).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    inv = (np.float32(1) / np.sqrt(np.float32(EPSILON))).astype(np.float32) * scale
    expected = (mean * inv) + (offset - mean * inv)  # float32 throughout, TensorFlow's order
    as_param = lambda v: torch.from_numpy(v).reshape(shape)  # noqa: E731
    fast = torch_fast.normalize(
        as_param(mean), as_param(mean), torch.zeros(shape), as_param(offset), as_param(scale), EPSILON,
        xp=xp,
    )
    np.testing.assert_array_equal(_np(fast).reshape(-1), expected)
    assert not np.array_equal(np.float32(mean.astype(np.float64) * inv + (offset - mean * inv)), expected)


@pytest.mark.parametrize("block_elements", [None, 64], ids=["whole", "blocks"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_torch_normalize_widened_is_bit_identical(torch_fast, monkeypatch, layout, dtype, block_elements):
    """Half x in float32 (the Keras layer), block by block into the output: the generic kernel's bits."""
    torch = pytest.importorskip("torch")
    _small_torch_blocks(monkeypatch, torch_fast, block_elements)
    xp = _torch_xp()
    channel = 1 if layout == "NCHW" else 3
    x, _, _ = _data((6, 4, 5, 3) if layout == "NCHW" else (6, 5, 3, 4), channel, "float32")
    shape = [1, 1, 1, 1]
    shape[channel] = 4
    mean, variance, offset, scale = (
        _to_torch(value, "float32").reshape(shape)
        for value in (RNG.normal(size=4), RNG.uniform(0.5, 2, size=4), RNG.normal(size=4), RNG.uniform(0.5, 2, size=4))
    )
    arguments = (_to_torch(x, dtype), mean, variance, offset, scale, EPSILON)
    fast = torch_fast.normalize(*arguments, xp=xp, compute=torch.float32)
    if not block_elements:  # one block: the generic whole-tensor expression serves it
        assert fast is NotImplemented
        return
    generic = _normalize.normalize.generic(*arguments, xp=xp, compute=torch.float32)
    assert fast.dtype == generic.dtype == getattr(torch, dtype)
    assert torch.equal(fast, generic)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no-autograd", "autograd"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NCHW-channels-last", "rows"])
def test_torch_fused_training_y_from_the_centred_values(torch_fast, layout, requires_grad):
    """float32 on CPU, taken whole: y is scaled and shifted from the statistics' centred
    values. The same bits as TensorFlow's formula from the returned statistics, in
    x's shape and memory layout; x untouched; the gradient still PyTorch's batch-norm one."""
    torch = pytest.importorskip("torch")
    xp = _torch_xp()
    shape, channel = {"NHWC": ((4, 6, 5, 8), 3), "rows": ((64, 8), 1)}.get(layout, ((4, 8, 6, 5), 1))
    x = torch.from_numpy(np.random.default_rng(9).normal(1e3, 1.0, shape).astype(np.float32))
    if layout == "NCHW-channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    before = x.clone()
    x.requires_grad_(requires_grad)
    scale, offset = torch.rand(shape[channel]) + 0.5, torch.randn(shape[channel])
    y, mean, variance, _ = torch_fast.fused_training_core(x, scale, offset, EPSILON, channel, xp=xp)
    expected = torch_fused_formula(x, mean, variance, scale, offset, channel)
    assert torch.equal(y.detach(), expected)
    assert y.stride() == expected.stride() == x.stride()
    assert torch.equal(x.detach(), before)
    if requires_grad:
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
        reference = torch.ops.aten.native_batch_norm_backward(
            torch.ones_like(y).movedim(channel, 1), x.detach().movedim(channel, 1), scale, None, None,
            mean, torch.reciprocal(torch.sqrt(variance + EPSILON)), True, EPSILON, [True, False, False],
        )[0].movedim(1, channel)
        torch.testing.assert_close(dx, reference, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("decay", [0.999, 0.9, 0.3])  # a weight under one half (lerp) and over it
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_moving_average_rounds_the_update_once(torch_fast, decay, dtype):
    """``v − a·(v − value)`` as one fused multiply-add: the exact update of the rounded
    difference rounded once (TensorFlow rounds the product too), so never further from it."""
    torch = pytest.importorskip("torch")
    from bn_portable._kernels._moving_averages import move_toward

    xp = _torch_xp()
    generator = torch.Generator().manual_seed(3)
    variable = torch.randn(512, generator=generator, dtype=torch.float64).to(getattr(torch, dtype))
    value = 3 * torch.randn(512, generator=generator, dtype=torch.float64).to(getattr(torch, dtype))
    weight = float(np.float32(1 - decay))  # exact in float32: the float64 product below is exact
    fast = torch_fast.move_toward(variable, value, weight, xp=xp)
    generic = move_toward.generic(variable, value, weight, xp=xp)
    if dtype == "float32":
        exact = variable.double() - (variable - value).double() * weight
        assert torch.equal(fast, exact.float())
        assert torch.all((fast.double() - exact).abs() <= (generic.double() - exact).abs())
    else:  # no wider dtype: the exact update in rationals, rounded once (float() of a Fraction)
        difference = (variable - value).tolist()
        exact_update = [float(Fraction(v) - Fraction(d) * Fraction(weight)) for v, d in zip(variable.tolist(), difference)]
        assert fast.tolist() == exact_update
    assert not torch.equal(fast, generic)  # the data round differently somewhere: a real check
    half, zero_d = variable.half(), torch.tensor(weight)
    assert torch_fast.move_toward(half, value.half(), weight, xp=xp) is NotImplemented
    assert torch_fast.move_toward(variable, value, zero_d, xp=xp) is NotImplemented

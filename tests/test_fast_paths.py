"""The fast paths give the generic kernels' results: bit for bit or within stated ulps.

Each fast path is called directly (so that a silent ``NotImplemented`` cannot
make a test pass by running the generic code) and compared with the generic
kernel (``kernel.generic``) on the same input.

Tolerances, and why:

- Elementwise steps the fast path performs with the same operations on the same
  operands (NumPy ``fused_inference`` and ``normalize``, PyTorch ``normalize``)
  must be **bit-identical**.
- Statistics differ only in the order of the additions. Both sides are within
  about two ulps of the exactly rounded sums for the sizes used here (at most a
  few thousand values per channel), so the mean may differ by ``SUM_ULPS``
  float32 ulps of the channel's mean absolute value and the variance by
  ``SUM_ULPS`` ulps of itself.
- ``y`` moves with the statistics: one ulp of mean or variance moves it by
  about one ulp of its scale, so float32 ``y`` may differ by ``Y_ULPS`` ulps of
  ``max |y|``, whatever ``|μ|/σ`` (no fast path folds μ into the offset).
  float16 and bfloat16 ``y`` is
  rounded once from float32 on both sides, so it may differ by one ulp of the
  half type where the float32 values straddle a rounding boundary.
- Gradients through PyTorch's native backward are the same mathematics in a
  different order: ``GRAD_RTOL`` relative to the largest component for float32.
"""

from __future__ import annotations

import math
import tracemalloc
import zlib

import array_api_compat.numpy as NP  # the namespace the library hands its kernels
import numpy as np
import pytest

import bn_portable as bn
from bn_portable._kernels import _backward, _moments, _normalize
from bn_portable._native import _numpy as numpy_kernels
from bn_portable._native._numpy import _plan as numpy_plan

SUM_ULPS = 4
Y_ULPS = 8
GRAD_RTOL = 1e-5
EPSILON = 1e-3
RNG = np.random.default_rng(20261127)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Each test draws its own data, whatever ran before it."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# (shape, channel axis) over NCHW, NHWC, NCDHW, NDHWC, odd channel counts and
# single-row / single-pixel batches.
LAYOUTS = [
    pytest.param((4, 3, 5, 7), 1, id="NCHW-C3"),
    pytest.param((4, 5, 7, 3), 3, id="NHWC-C3"),
    pytest.param((2, 5, 3, 4, 6), 1, id="NCDHW-C5"),
    pytest.param((2, 3, 4, 6, 5), 4, id="NDHWC-C5"),
    pytest.param((16, 33, 12, 12), 1, id="NCHW-C33-long-rows"),
    pytest.param((8, 12, 12, 33), 3, id="NHWC-C33"),
    pytest.param((3, 1, 1, 7), 3, id="NHWC-1x1-pixels"),
    pytest.param((1, 7, 9, 1), 3, id="NHWC-C1"),
    pytest.param((1, 2, 300, 200), 1, id="NCHW-channel-larger-than-a-block"),
]
FLOAT_DTYPES = ["float32", "float16"]


def _data(shape, channel, dtype, mean=1.5, spread=2.0):
    x = RNG.normal(mean, spread, size=shape).astype(dtype)
    channels = shape[channel]
    scale = RNG.uniform(0.5, 1.5, channels).astype(np.float32)
    offset = RNG.normal(0.0, 1.0, channels).astype(np.float32)
    return x, scale, offset


def _axes(rank, channel):
    return tuple(axis for axis in range(rank) if axis != channel)


def _ulps_of_scale(actual, expected, dtype):
    """Largest difference in ulps of ``dtype`` at ``max |expected|``."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
    return float(np.max(np.abs(actual - expected))) / (float(np.finfo(dtype).eps) * scale)


def _assert_statistics_close(fast_mean, generic_mean, fast_var, generic_var, x, channel):
    """Fast statistics are accurate, and as close to the generic ones as the generic ones are to exact.

    The generic NumPy/PyTorch reductions over outer axes are plain running
    float32 sums whose error grows with the row count (tens of ulps for a few
    thousand NHWC rows), so "close to generic" is measured with the generic
    kernel's own error added to the allowance.
    """
    eps = float(np.finfo(np.float32).eps)
    axes = _axes(x.ndim, channel)
    x64 = np.asarray(x, dtype=np.float64)
    exact_mean = x64.mean(axis=axes)
    shape = [1] * x.ndim
    shape[channel] = -1
    exact_var = ((x64 - exact_mean.reshape(shape)) ** 2).mean(axis=axes)
    mean_unit = eps * np.mean(np.abs(x64), axis=axes)
    var_unit = eps * exact_var
    for fast, generic, exact, unit in (
        (fast_mean, generic_mean, exact_mean, mean_unit),
        (fast_var, generic_var, exact_var, var_unit),
    ):
        fast = np.asarray(fast, dtype=np.float64)
        generic = np.asarray(generic, dtype=np.float64)
        assert np.all(np.abs(fast - exact) <= SUM_ULPS * unit + 1e-30)
        assert np.all(np.abs(fast - generic) <= SUM_ULPS * unit + np.abs(generic - exact) + 1e-30)


def _assert_y_close(fast, generic, x, scale, offset, channel, dtype):
    """y within Y_ULPS of the generic y plus the generic y's own error (float32)."""
    _, _, exact = _reference(np.asarray(x, dtype=np.float64), scale, offset, channel)
    fast, generic = np.asarray(fast, np.float64), np.asarray(generic, np.float64)
    if dtype == "float32":
        unit = float(np.finfo(np.float32).eps) * np.max(np.abs(exact))
        generic_error = np.max(np.abs(generic - exact))
        assert np.max(np.abs(fast - exact)) <= Y_ULPS * unit
        assert np.max(np.abs(fast - generic)) <= Y_ULPS * unit + generic_error
    else:  # one rounding to the half type of nearly equal float32 values
        assert np.max(np.abs(fast - generic)) <= _half_eps(dtype) * np.max(np.abs(generic))


def _half_eps(dtype):
    return 2.0**-7 if dtype == "bfloat16" else float(np.finfo(np.float16).eps)


def _reference(x, scale, offset, channel):
    """TensorFlow's fused training formula in float64 (mean, variance, y)."""
    axes = _axes(x.ndim, channel)
    shape = [1] * x.ndim
    shape[channel] = -1
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes)
    variance = ((x64 - mean.reshape(shape)) ** 2).mean(axis=axes)
    factor = scale.astype(np.float64) / np.sqrt(variance + EPSILON)
    y = (x64 - mean.reshape(shape)) * factor.reshape(shape) + offset.reshape(shape)
    return mean, variance, y


# ---------------------------------------------------------------------------
# NumPy
# ---------------------------------------------------------------------------


@pytest.fixture(params=["default-blocks", "tiny-blocks", "tiny-blocks-3-threads"])
def numpy_fast(request, monkeypatch):
    """The NumPy fast-path module, made to take even the small test inputs.

    ``tiny-blocks`` shrinks every block so that the multi-block code (several
    row blocks, channel groups split across rows, partial last blocks, the
    float64 flush of running sums) runs on these small inputs too;
    ``tiny-blocks-3-threads`` also shares those blocks among three threads.
    """
    monkeypatch.setattr(numpy_plan, "SMALLEST_INPUT", 0)
    monkeypatch.setattr(numpy_plan, "SMALLEST_HALF_INPUT", 0)
    monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", "1")
    if request.param.startswith("tiny-blocks"):
        request.getfixturevalue("tiny_numpy_blocks")
    if request.param.endswith("3-threads"):
        monkeypatch.setattr(numpy_plan, "SMALLEST_SHARED_INPUT", 0)
        monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", "3")
    return numpy_kernels


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
def test_numpy_fused_training_matches_generic(numpy_fast, shape, channel, dtype):
    x, scale, offset = _data(shape, channel, dtype)
    fast = numpy_fast.fused_training_core(x, scale, offset, EPSILON, channel, xp=NP)
    assert fast is not NotImplemented
    generic = _normalize.fused_training_core.generic(x, scale, offset, EPSILON, channel, xp=NP)
    y, mean, variance, count = fast
    assert count == generic[3]
    assert y.dtype == x.dtype and y.shape == x.shape
    assert mean.dtype == variance.dtype == np.float32
    assert mean.shape == variance.shape == (shape[channel],)
    _assert_statistics_close(mean, generic[1], variance, generic[2], x, channel)
    _assert_y_close(y, generic[0], x, scale, offset, channel, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
def test_numpy_fused_inference_is_bit_identical(numpy_fast, shape, channel, dtype):
    x, scale, offset = _data(shape, channel, dtype)
    channels = shape[channel]
    mean = RNG.normal(1.0, 1.0, channels).astype(np.float32)
    variance = RNG.uniform(0.5, 4.0, channels).astype(np.float32)
    fast = numpy_fast.fused_inference(x, scale, offset, mean, variance, EPSILON, channel, xp=NP)
    assert fast is not NotImplemented
    generic = _normalize.fused_inference.generic(
        x, scale, offset, mean, variance, EPSILON, channel, xp=NP
    )
    np.testing.assert_array_equal(fast, generic)
    assert fast.dtype == generic.dtype


def _generic_local_moments(x, axes):
    """The generic kernel on what its caller hands it: x in the compute dtype (float32 for float16)."""
    compute = np.float32 if x.dtype == np.float16 else x.dtype
    return _moments.local_moments.generic(x.astype(compute), axes, xp=NP)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
def test_numpy_local_moments_match_generic(numpy_fast, shape, channel, dtype):
    x, _, _ = _data(shape, channel, dtype)
    axes = _axes(x.ndim, channel)
    count = math.prod(shape[axis] for axis in axes)
    # float16 is summed in float32: the generic kernel's compute=float32 (the Keras layer's).
    compute = np.float32 if dtype == "float16" else None
    fast = numpy_fast.local_moments(x, axes, xp=NP, compute=compute)
    assert fast is not NotImplemented
    generic = _generic_local_moments(x, axes)
    for f, g in zip(fast, generic):
        assert f.dtype == g.dtype and f.shape == g.shape
    # m2 is the sum of squared deviations: the caller divides by n.
    fast_variance, generic_variance = fast[1] / count, generic[1] / count
    if dtype == "float64":
        np.testing.assert_allclose(fast[0], generic[0], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(fast_variance, generic_variance, rtol=1e-13)
    else:
        _assert_statistics_close(
            fast[0].reshape(-1),
            generic[0].reshape(-1),
            fast_variance.reshape(-1),
            generic_variance.reshape(-1),
            x,
            channel,
        )


def test_numpy_local_moments_over_every_axis(numpy_fast):
    x = RNG.normal(2.0, 3.0, size=(5, 6, 7)).astype(np.float32)
    axes = (0, 1, 2)
    fast = numpy_fast.local_moments(x, axes, xp=NP)
    generic = _generic_local_moments(x, axes)
    assert fast[0].shape == generic[0].shape == fast[1].shape == (1, 1, 1)
    np.testing.assert_allclose(fast[0], generic[0], rtol=SUM_ULPS * 2**-23)
    np.testing.assert_allclose(fast[1], generic[1], rtol=SUM_ULPS * 2**-23)


def _row_weights(shape, channel, kind):
    """Frequency weights constant along every axis after the channel's: one per example
    (tf-slim's batch_weights), one per value before the channel axis (a Keras mask over
    an NHWC batch's pixels), or with zeros (examples left out)."""
    weights = RNG.uniform(0.25, 2.0, size=shape[:channel]).astype(np.float32)
    if kind == "per-example":
        weights = weights[(slice(None),) + (0,) * (channel - 1)].reshape((-1,) + (1,) * (len(shape) - 1))
    elif kind == "with-zeros":
        weights = (weights > 1.0).astype(np.float32)
    return weights.reshape(weights.shape + (1,) * (len(shape) - weights.ndim))


def _weighted_reference(x, axes, weights):
    """Total weight and weighted mean in extended precision (tf.nn.weighted_moments' formulas)."""
    x64 = np.asarray(x, dtype=np.longdouble)
    w = np.broadcast_to(np.asarray(weights, dtype=np.longdouble), x.shape)
    count = w.sum(axis=axes, keepdims=True)
    mean = np.divide((w * x64).sum(axis=axes, keepdims=True), count, where=count != 0, out=np.zeros_like(count))
    return count, mean


@pytest.mark.parametrize("kind", ["per-example", "per-row", "with-zeros"])
@pytest.mark.parametrize(("dtype", "mean"), [
    ("float32", 3.0), ("float16", 3.0), ("float64", 3.0), ("float32", 2e4), ("float64", 2e4),
])
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
def test_numpy_weighted_moments_are_accurate(numpy_fast, shape, channel, dtype, mean, kind):
    """Within a few ulps of the extended-precision weighted moments beyond the generic
    kernel's own error, ill-conditioned data included (|mean|/σ = 1e4), in the shape the
    generic kernel gives, without a widened copy of float16 x."""
    x, _, _ = _data(shape, channel, dtype, mean=mean)
    axes = _axes(x.ndim, channel)
    weights = _row_weights(shape, channel, kind)
    compute = np.float32 if dtype == "float16" else None
    fast = numpy_fast.weighted_local_moments(x, axes, weights, "zero", xp=NP, compute=compute)
    assert fast is not NotImplemented
    wide = x.astype(compute or x.dtype)
    generic = _moments.weighted_local_moments.generic(wide, axes, weights, "zero", xp=NP)
    eps = float(np.finfo(wide.dtype).eps)
    count, exact_mean = _weighted_reference(wide, axes, weights)
    magnitude = (np.broadcast_to(weights, x.shape) * np.abs(wide.astype(np.longdouble))).sum(axis=axes, keepdims=True)
    for f, g in zip(fast, generic):
        assert f.dtype == g.dtype == wide.dtype
        assert np.broadcast_shapes(f.shape, g.shape) == f.shape
    np.testing.assert_allclose(fast[0], np.broadcast_to(count, fast[0].shape), rtol=2 * eps)
    safe = np.where(count == 0, 1.0, count)
    # float32 sums are float64 totals of short partials: within SUM_ULPS of exact. float64
    # sums have no wider totals (a running sum over up to a thousand terms here, as the
    # generic kernel's own error shows): 32 ulps beyond the generic kernel's error.
    ulps = SUM_ULPS if wide.dtype == np.float32 else 32
    unit = eps * magnitude / safe
    assert np.all(np.abs(fast[1] - exact_mean) <= ulps * unit + np.abs(generic[1] - exact_mean) + 1e-30)
    # m2 is the sum around the mean the kernel rounded (TensorFlow's two passes), checked
    # against the exact sum around that mean, whatever |mean|/σ. Long runs sum squares by
    # dot products over 4096-value segments, whose float32 accumulation the library does
    # not control (BLAS's vecdot on NumPy 2, einsum's loop on NumPy 1.26): the unweighted
    # kernel measured 3.3 and 10.6 ulps off there at |mean|/σ = 1e4 over 60 000 values.
    centred = wide.astype(np.longdouble) - fast[1].astype(np.longdouble)
    w = np.broadcast_to(np.asarray(weights, dtype=np.longdouble), x.shape)
    around_rounded = (w * centred**2).sum(axis=axes, keepdims=True)
    m2_ulps = 16 if wide.dtype == np.float32 else 32
    assert np.all(np.abs(fast[2] - around_rounded) <= m2_ulps * eps * around_rounded + 1e-30)
    assert np.all(np.where(count == 0, fast[1] == 0, True))


def test_numpy_weighted_moments_decline_what_they_do_not_cover(numpy_fast):
    x = RNG.normal(size=(4, 3, 5, 7)).astype(np.float32)
    pixels = RNG.uniform(size=(4, 1, 5, 7)).astype(np.float32)  # a mask over NCHW pixels: varies after C
    per_channel = RNG.uniform(size=(1, 3, 1, 1)).astype(np.float32)
    for weights, empty in ((pixels, "zero"), (per_channel, "zero"), (np.ones((4, 1, 1, 1), np.float32), "nan")):
        assert numpy_fast.weighted_local_moments(x, (0, 2, 3), weights, empty, xp=NP) is NotImplemented
    assert numpy_fast.weighted_local_moments(x, (0, 2), np.ones((4, 1, 1, 1), np.float32), "zero", xp=NP) is NotImplemented


@pytest.mark.parametrize(("shape", "channel"), [((8, 30, 30, 64), 3), ((8, 64, 30, 30), 1)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_numpy_weighted_training_peak_memory(shape, channel, dtype, monkeypatch):
    """tf-slim's weighted training step: at most 1.25x the input, output included
    (the generic kernel's centred and squared batch made it 2x, 6x for float16)."""
    monkeypatch.setattr(numpy_plan, "SMALLEST_HALF_INPUT", 0)
    x, _, _ = _data(shape, channel, dtype)
    weights = RNG.uniform(0.5, 1.5, shape[0]).astype(np.float32)
    options = {"scale": True, "data_format": "NHWC" if channel == 3 else "NCHW", "batch_weights": weights}
    _, state = bn.batch_norm(x, None, **options)
    with bn.fast_paths(True):
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            result = bn.batch_norm(x, state, **options)
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
    del result
    assert peak <= 1.25 * x.nbytes + 64 * 1024, peak / x.nbytes


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
@pytest.mark.parametrize("with_offset", [True, False])
def test_numpy_normalize_is_bit_identical(numpy_fast, shape, channel, dtype, with_offset):
    x, scale, offset = _data(shape, channel, dtype)
    parameter_shape = [1] * len(shape)
    parameter_shape[channel] = shape[channel]
    mean, variance, scale, offset = (
        RNG.normal(0.5, 1.0, parameter_shape).astype(dtype),
        RNG.uniform(0.5, 2.0, parameter_shape).astype(dtype),
        scale.reshape(parameter_shape).astype(dtype),
        offset.reshape(parameter_shape).astype(dtype) if with_offset else None,
    )
    fast = numpy_fast.normalize(x, mean, variance, offset, scale, EPSILON, xp=NP)
    assert fast is not NotImplemented
    generic = _normalize.normalize.generic(x, mean, variance, offset, scale, EPSILON, xp=NP)
    np.testing.assert_array_equal(fast, generic)
    assert fast.dtype == generic.dtype


@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
def test_numpy_normalize_widened_is_bit_identical(numpy_fast, shape, channel):
    """float16 x in float32 (the Keras layer): widened block by block, rounded once, as the generic kernel."""
    x, scale, offset = _data(shape, channel, "float16")
    parameter_shape = [1] * len(shape)
    parameter_shape[channel] = shape[channel]
    mean = RNG.normal(0.5, 1.0, parameter_shape).astype(np.float32)
    variance = RNG.uniform(0.5, 2.0, parameter_shape).astype(np.float32)
    scale, offset = (v.reshape(parameter_shape).astype(np.float32) for v in (scale, offset))
    arguments = (x, mean, variance, offset, scale, EPSILON)
    fast = numpy_fast.normalize(*arguments, xp=NP, compute=np.float32)
    assert fast is not NotImplemented and fast.dtype == np.float16
    generic = _normalize.normalize.generic(*arguments, xp=NP, compute=np.float32)
    np.testing.assert_array_equal(fast, generic)
    assert numpy_fast.normalize(*arguments, xp=NP, compute=np.float64) is NotImplemented


def test_numpy_normalize_with_scalar_and_trailing_parameters(numpy_fast):
    x = RNG.normal(size=(7, 9)).astype(np.float32)
    cases = [
        (np.asarray(0.5, np.float32), np.ones((), np.float32), None, None),
        (np.zeros(9, np.float32), np.full(9, 2.0, np.float32), np.ones(9, np.float32), None),
    ]
    for mean, variance, offset, scale in cases:
        fast = numpy_fast.normalize(x, mean, variance, offset, scale, EPSILON, xp=NP)
        generic = _normalize.normalize.generic(x, mean, variance, offset, scale, EPSILON, xp=NP)
        np.testing.assert_array_equal(fast, generic)


def _backward_constants(shape, channel, dtype):
    """Per-channel ``mean, a, b, c`` of the backward's elementwise pass, shaped to broadcast."""
    compute = np.float64 if dtype == "float64" else np.float32
    parameter_shape = [1] * len(shape)
    parameter_shape[channel] = shape[channel]
    return [
        RNG.normal(0.5, 1.0, parameter_shape).astype(compute) for _ in ("mean", "a", "b", "c")
    ]


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
@pytest.mark.parametrize("is_training", [True, False])
def test_numpy_gradient_input_is_bit_identical(numpy_fast, shape, channel, dtype, is_training):
    x, _, _ = _data(shape, channel, dtype)
    dy = RNG.normal(0.0, 1.0, shape).astype(dtype)
    mean, a, b, c = _backward_constants(shape, channel, dtype)
    if not is_training:
        b = c = None
    fast = numpy_fast.gradient_input(dy, x, mean, a, b, c, None, xp=NP)
    assert fast is not NotImplemented
    generic = _backward.gradient_input.generic(dy, x, mean, a, b, c, None, xp=NP)
    np.testing.assert_array_equal(fast, generic)
    assert fast.dtype == generic.dtype == x.dtype


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
def test_numpy_gradient_sums_are_accurate(numpy_fast, shape, channel, dtype):
    x, _, _ = _data(shape, channel, dtype)
    dy = RNG.normal(0.3, 1.0, shape).astype(dtype)
    compute = np.float64 if dtype == "float64" else np.float32
    mean = RNG.normal(1.5, 0.1, shape[channel]).astype(compute)
    fast = numpy_fast.gradient_sums(dy, x, mean, channel, xp=NP)
    assert fast is not NotImplemented
    generic = _backward.gradient_sums.generic(dy, x, mean, channel, xp=NP)
    axes = _axes(x.ndim, channel)
    shape_b = [1] * x.ndim
    shape_b[channel] = -1
    dy64, x64 = dy.astype(np.float64), x.astype(np.float64)
    centred = x64 - mean.astype(np.float64).reshape(shape_b)
    exact = [dy64.sum(axis=axes), (dy64 * centred).sum(axis=axes)]
    # One ulp of the sum of magnitudes per few terms: what any float32 summation order allows.
    magnitudes = [np.abs(dy64).sum(axis=axes), np.abs(dy64 * centred).sum(axis=axes)]
    # For float64 data the float64 reference has rounding errors of its own.
    ulps = SUM_ULPS if dtype != "float64" else 64
    eps = float(np.finfo(compute).eps)
    for f, g, e, m in zip(fast, generic, exact, magnitudes):
        assert f.dtype == g.dtype == compute and f.shape == g.shape == (shape[channel],)
        assert np.all(np.abs(f - e) <= ulps * eps * m + 1e-300)


def test_numpy_backward_declines_what_it_does_not_cover(numpy_fast):
    x, _, _ = _data((4, 5, 6, 3), 3, "float32")
    dy = RNG.normal(size=x.shape).astype(np.float32)
    mean, a, b, c = _backward_constants(x.shape, 3, "float32")
    share = np.full((4, 1, 1, 1), 0.25, np.float32)  # weighted: the generic kernel's job
    assert numpy_fast.gradient_input(dy, x, mean, a, b, c, share, xp=NP) is NotImplemented
    transposed = dy.transpose(0, 2, 1, 3)
    assert numpy_fast.gradient_input(transposed, x, mean, a, b, c, None, xp=NP) is NotImplemented
    assert (
        numpy_fast.gradient_sums(dy.astype(np.float16), x, mean.reshape(-1), 3, xp=NP)
        is NotImplemented
    )


def test_numpy_public_backward_uses_the_fast_paths():
    x, scale, _ = _data((40, 16, 16, 11), 3, "float32")  # above the small-input cut-off
    dy = RNG.normal(size=x.shape).astype(np.float32)
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    variance = x.var(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    with bn.fast_paths(True):
        fast = bn.fused_batch_norm_grad(dy, x, scale, mean, variance)
    with bn.fast_paths(False):
        generic = bn.fused_batch_norm_grad(dy, x, scale, mean, variance)
    # The fast sums are added in another order than the generic ones.
    assert any(not np.array_equal(f, g) for f, g in zip(fast, generic))
    for f, g in zip(fast, generic):
        np.testing.assert_allclose(f, g, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(g))))


def test_numpy_declines_what_it_does_not_cover(numpy_fast):
    x, scale, offset = _data((4, 5, 6, 3), 3, "float32")
    transposed = x.transpose(0, 2, 1, 3)  # not C-contiguous
    assert (
        numpy_fast.fused_training_core(transposed, scale, offset, EPSILON, 3, xp=NP) is NotImplemented
    )
    single = x[:1, :1, :1, :]  # one value per channel: TF's n = 1 corner case
    assert numpy_fast.fused_training_core(single, scale, offset, EPSILON, 3, xp=NP) is NotImplemented
    # and the public function still gives TF's n = 1 answer: y = offset, variance 0
    y, _, variance = bn.fused_batch_norm(np.ascontiguousarray(single), scale, offset)
    np.testing.assert_array_equal(y.reshape(-1), offset)
    np.testing.assert_array_equal(variance, np.zeros(3, np.float32))
    grid = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    assert numpy_fast.local_moments(grid, (0,), xp=NP) is NotImplemented  # two kept axes
    empty = np.zeros((0, 4, 4, 3), np.float32)
    stats = np.ones(3, np.float32)
    assert numpy_fast.fused_training_core(empty, scale, offset, EPSILON, 3, xp=NP) is NotImplemented
    assert (
        numpy_fast.fused_inference(empty, scale, offset, stats, stats, EPSILON, 3, xp=NP)
        is NotImplemented
    )


@pytest.mark.parametrize(("shape", "channel"), [((16, 40, 40, 32), 3), ((16, 32, 40, 40), 1)])
def test_numpy_fast_statistics_stay_accurate_on_large_batches(numpy_fast, shape, channel):
    """25 600 rows per channel: the fast sums stay within 2 ulps of exact."""
    x, scale, offset = _data(shape, channel, "float32", mean=4.0)
    y, mean, variance, _ = numpy_fast.fused_training_core(x, scale, offset, EPSILON, channel, xp=NP)
    mean64, variance64, y64 = _reference(x, scale, offset, channel)
    eps = float(np.finfo(np.float32).eps)
    magnitude = np.mean(np.abs(x.astype(np.float64)), axis=_axes(x.ndim, channel))
    assert np.all(np.abs(mean - mean64) <= 2 * eps * magnitude)
    assert np.all(np.abs(variance - variance64) <= 2 * eps * variance64)
    assert _ulps_of_scale(y, y64, np.float32) <= 4


@pytest.mark.parametrize(("shape", "channel"), [((8, 30, 30, 64), 3), ((8, 64, 30, 30), 1)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_numpy_training_peak_memory(shape, channel, dtype, monkeypatch):
    """Output included, the training kernel allocates at most 1.25× the input."""
    monkeypatch.setattr(numpy_plan, "SMALLEST_HALF_INPUT", 0)

    x, scale, offset = _data(shape, channel, dtype)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = numpy_kernels.fused_training_core(x, scale, offset, EPSILON, channel, xp=NP)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    del result
    assert peak <= 1.25 * x.nbytes + 64 * 1024, peak / x.nbytes


@pytest.mark.parametrize(("shape", "channel", "whole"), [((256, 512), 1, True), ((8, 30, 30, 64), 3, False)])
def test_numpy_inference_peak_memory(shape, channel, whole):
    """Inference and ``normalize`` allocate y and block-sized tiles at most; a small input in
    wide rows (``WHOLE_PASS_INPUT``) runs each pass whole, straight into y, and allocates y alone."""
    x, scale, offset = _data(shape, channel, "float32")
    assert numpy_plan.plan_for(x.shape, channel, 4, shared=True).whole_pass is whole
    mean, variance = RNG.normal(size=shape[channel]).astype(np.float32), np.ones(shape[channel], np.float32)
    calls = {
        "fused_inference": lambda: numpy_kernels.fused_inference(x, scale, offset, mean, variance, EPSILON, channel, xp=NP),
        "normalize": lambda: numpy_kernels.normalize(x, mean, variance, offset, scale, EPSILON, xp=NP),
    }
    for name, call in calls.items():
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            result = call()
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        assert result is not NotImplemented
        del result
        # A whole pass: y, and the buffer of at most 8192 values NumPy's iterator takes
        # for a broadcast operand (the blocked passes' tiles here would add 63 KB).
        limit = x.nbytes + 48 * 1024 if whole else 1.25 * x.nbytes + 64 * 1024
        assert peak <= limit, (name, peak / x.nbytes)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_moments_whole_pass(monkeypatch, dtype):
    """A small input in wide rows (``WHOLE_PASS_INPUT``) centres and squares every row at once,
    into one temporary of the input's size, and sums the same blocks: the blocked pass's bits."""
    x = RNG.normal(3.0, 1.0, (256, 512)).astype(dtype)
    assert numpy_plan.plan_for(x.shape, 1, x.dtype.itemsize, shared=True).whole_pass
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        whole = numpy_kernels.local_moments(x, (0,), xp=NP)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # The temporary and the sums' two block buffers (1.17-1.19x on NumPy 2, 1.27x on 1.x,
    # whose broadcasting iterator buffers): the kernels' bound, 1.25x plus 64 KB.
    assert peak <= 1.25 * x.nbytes + 64 * 1024, peak / x.nbytes
    monkeypatch.setattr(numpy_plan, "WHOLE_PASS_INPUT", 0)
    blocked = numpy_kernels.local_moments(x, (0,), xp=NP)
    for value, expected in zip(whole, blocked, strict=True):
        np.testing.assert_array_equal(value, expected)


def test_numpy_public_functions_use_the_fast_paths():
    x, scale, offset = _data((40, 16, 16, 11), 3, "float32")  # above the small-input cut-off
    with bn.fast_paths(True):
        fast = bn.fused_batch_norm(x, scale, offset)
    with bn.fast_paths(False):
        generic = bn.fused_batch_norm(x, scale, offset)
    _assert_y_close(fast[0], generic[0], x, scale, offset, 3, "float32")
    bessel = np.float32(x.size / 11 / (x.size / 11 - 1))
    _assert_statistics_close(fast[1], generic[1], fast[2] / bessel, generic[2] / bessel, x, 3)


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

TORCH_DTYPES = ["float32", "float16", "bfloat16"]


@pytest.fixture
def torch_fast():
    pytest.importorskip("torch")
    from bn_portable._native import _torch

    return _torch


def _torch_xp():
    import array_api_compat.torch as xp

    return xp


def _to_torch(array, dtype):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(getattr(torch, dtype))


def _np(tensor):
    import torch

    return tensor.detach().to(torch.float32).cpu().numpy()


def _small_torch_blocks(monkeypatch, torch_fast, block_elements):
    """Cut even the small test inputs into several blocks (the blocked code of large CPU batches)."""
    from bn_portable._native import _torch_blocks

    if block_elements:
        monkeypatch.setattr(_torch_blocks, "BLOCK_ELEMENTS", block_elements)


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
    # the generic kernel's operations in its order: bit for bit
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
    # ... which is TensorFlow's formula with those statistics, bit for bit
    formula = _normalize.fused_inference.generic(*args, mean, variance, EPSILON, channel, xp=xp)
    np.testing.assert_array_equal(_np(y), _np(formula))


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
@pytest.mark.parametrize(
    ("shape", "data_format"),
    [
        ((4, 3, 5, 7), "NCHW"),
        ((4, 5, 7, 3), "NHWC"),
        ((8, 40, 40, 3), "NHWC"),  # the channels-last path with its own autograd node
        ((2, 3, 4, 5, 6), "NCDHW"),
        ((2, 4, 5, 6, 3), "NDHWC"),
    ],
)
@pytest.mark.parametrize("is_training", [True, False])
def test_torch_autograd_through_fast_path_equals_generic(shape, data_format, dtype, is_training):
    torch = pytest.importorskip("torch")
    channel = 1 if data_format.startswith("NC") else len(shape) - 1
    x, scale, offset = _data(shape, channel, "float32")
    dy = _to_torch(RNG.normal(size=shape), dtype)
    channels = shape[channel]
    statistics = {}
    if not is_training:
        statistics = {
            "mean": _to_torch(RNG.normal(1.0, 0.5, channels), "float32"),
            "variance": _to_torch(RNG.uniform(1.0, 3.0, channels), "float32"),
        }
    results = []
    for fast in (True, False):
        xt = _to_torch(x, dtype).requires_grad_()
        st = _to_torch(scale, "float32").requires_grad_()
        ot = _to_torch(offset, "float32").requires_grad_()
        with bn.fast_paths(fast):
            y, _, _ = bn.fused_batch_norm(
                xt, st, ot, data_format=data_format, is_training=is_training, **statistics
            )
        results.append((y, *torch.autograd.grad(y, (xt, st, ot), dy)))
    for fast_value, generic_value in zip(*results):
        f, g = _np(fast_value), _np(generic_value)
        tolerance = GRAD_RTOL if dtype == "float32" else 2 * _half_eps(dtype)
        assert np.max(np.abs(f - g)) <= tolerance * np.max(np.abs(g)), (fast_value.dtype, f, g)


def test_torch_double_backward_through_the_channels_last_path():
    torch = pytest.importorskip("torch")
    shape = (8, 40, 40, 3)
    x, scale, offset = _data(shape, 3, "float32")
    grads = []
    for fast in (True, False):
        xt = _to_torch(x, "float32").requires_grad_()
        st, ot = _to_torch(scale, "float32"), _to_torch(offset, "float32")
        with bn.fast_paths(fast):
            y, _, _ = bn.fused_batch_norm(xt, st, ot, data_format="NHWC")
        (gx,) = torch.autograd.grad((y**3).sum(), xt, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.square().sum(), xt)
        grads.append(_np(ggx))
    assert np.max(np.abs(grads[0] - grads[1])) <= 1e-3 * np.max(np.abs(grads[1]))


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


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("is_training", [True, False])
def test_torch_gradient_input_is_bit_identical(
    torch_fast, monkeypatch, shape, channel, dtype, weighted, is_training
):
    _small_torch_blocks(monkeypatch, torch_fast, 64)  # several blocks on small inputs
    xp = _torch_xp()
    compute = "float64" if dtype == "float64" else "float32"
    x = _to_torch(RNG.normal(1.0, 2.0, shape), dtype)
    dy = _to_torch(RNG.normal(0.0, 1.0, shape), dtype)
    mean, a, b, c = (
        _to_torch(v, compute) for v in _backward_constants(shape, channel, compute)
    )
    share = None
    if weighted and is_training:
        share = _to_torch(RNG.uniform(0.0, 0.1, (shape[0],) + (1,) * (len(shape) - 1)), compute)
    if not is_training:
        b = c = None
    fast = torch_fast.gradient_input(dy, x, mean, a, b, c, share, xp=xp)
    assert fast is not NotImplemented
    generic = _backward.gradient_input.generic(dy, x, mean, a, b, c, share, xp=xp)
    assert fast.dtype == generic.dtype == x.dtype
    assert fast.shape == generic.shape
    import torch

    assert torch.equal(fast, generic)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
def test_torch_gradient_sums_are_accurate(torch_fast, monkeypatch, shape, channel, dtype):
    _small_torch_blocks(monkeypatch, torch_fast, 64)
    import torch

    xp = _torch_xp()
    x = _to_torch(RNG.normal(1.5, 2.0, shape), dtype)
    dy = _to_torch(RNG.normal(0.3, 1.0, shape), dtype)
    mean = torch.from_numpy(RNG.normal(1.5, 0.1, shape[channel]).astype(np.float32))
    fast = torch_fast.gradient_sums(dy, x, mean, channel, xp=xp)
    assert fast is not NotImplemented
    generic = _backward.gradient_sums.generic(dy, x, mean, channel, xp=xp)
    axes = _axes(len(shape), channel)
    shape_b = [1] * len(shape)
    shape_b[channel] = -1
    dy64, x64 = _np(dy).astype(np.float64), _np(x).astype(np.float64)
    products = dy64 * (x64 - _np(mean).astype(np.float64).reshape(shape_b))
    eps = float(np.finfo(np.float32).eps)
    for f, g, terms in zip(fast, generic, (dy64, products)):
        assert f.dtype == g.dtype == torch.float32 and f.shape == g.shape == (shape[channel],)
        exact, magnitude = terms.sum(axis=axes), np.abs(terms).sum(axis=axes)
        assert np.all(np.abs(_np(f) - exact) <= SUM_ULPS * eps * magnitude)


def test_torch_backward_leaves_autograd_to_the_generic_kernels(torch_fast):
    xp = _torch_xp()
    x = _to_torch(RNG.normal(size=(4, 3, 5, 6)), "float32").requires_grad_(True)
    dy = _to_torch(RNG.normal(size=(4, 3, 5, 6)), "float32")
    mean, a, b, c = (_to_torch(v, "float32") for v in _backward_constants(x.shape, 1, "float32"))
    assert torch_fast.gradient_input(dy, x, mean, a, b, c, None, xp=xp) is NotImplemented
    assert torch_fast.gradient_sums(dy, x, mean.reshape(-1), 1, xp=xp) is NotImplemented


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_training_and_inference_agree_once_the_moving_statistics_converge(library):
    """tf-slim's testNoneUpdatesCollectionIsTrainingVariableFusedNCHW, ported.

    Ten training steps with decay 0.1 bring the moving statistics to the
    batch's; with the moving variance's Bessel correction undone, as the
    original test does, inference must give training's output (TensorFlow's
    assertAllClose: rtol = atol = 1e-6), here also with a large mean.
    """
    height, width, batch, channels = 2, 3, 10, 3
    values = RNG.random((batch, channels, height, width)) + 100.0
    x = values.astype(np.float32)
    if library == "torch":
        torch = pytest.importorskip("torch")
        x = torch.from_numpy(x)
    options = dict(decay=0.1, fused=True, data_format="NCHW")
    _, state = bn.batch_norm(x, None, **options)
    for _ in range(10):
        output_training, state = bn.batch_norm(x, state, **options)
    count = batch * height * width
    correction = np.float32((count - 1) / count)
    state = state._replace(moving_variance=state.moving_variance * correction)
    output_training, _ = bn.batch_norm(x, state, **options)
    output_inference, _ = bn.batch_norm(x, state, is_training=False, **options)
    np.testing.assert_allclose(_np_any(output_inference), _np_any(output_training), rtol=1e-6, atol=1e-6)


def _np_any(array):
    return array if isinstance(array, np.ndarray) else _np(array)


# torch local_moments: batches of at least 2^16 values, NCHW, NHWC and [N, C].
TORCH_MOMENT_LAYOUTS = [((16, 32, 12, 12), 1), ((16, 12, 12, 32), 3), ((4096, 24), 1)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("shape", "channel"), TORCH_MOMENT_LAYOUTS)
def test_torch_local_moments_are_accurate(torch_fast, shape, channel, dtype):
    """Mean and m2 within a few ulps of float64, |mean|/σ = 1e4 included, and of the generic kernel's."""
    from bn_portable._kernels import _moments

    xp = _torch_xp()
    axes = tuple(axis for axis in range(len(shape)) if axis != channel)
    for loc in (0.5, 1e4):
        x = np.random.default_rng(11).normal(loc, 1.0, shape)
        tensor = _to_torch(x, "float32").to(getattr(__import__("torch"), dtype))
        # The reference in extended precision (float64 data included, where NumPy's own
        # float64 sums would be a few epsilons off themselves).
        x64 = tensor.double().numpy().astype(np.longdouble)
        mean, m2 = torch_fast.local_moments(tensor, axes, xp=xp)
        generic_mean, generic_m2 = _moments.local_moments.generic(tensor, axes, xp=xp)
        mean64 = x64.mean(axis=axes, keepdims=True)
        m2_64 = ((x64 - mean64) ** 2).sum(axis=axes, keepdims=True)
        eps = float(np.finfo(dtype).eps)
        assert tuple(mean.shape) == tuple(generic_mean.shape) == mean64.shape
        assert np.all(np.abs(mean.double().numpy() - mean64) <= 2 * eps * np.abs(mean64) + 2 * eps)
        # m2 inherits the mean's rounding, squared: eps·|mean|/σ relative, as any two-pass variance.
        bound = 4 * eps * m2_64 * (1 + loc)
        assert np.all(np.abs(m2.double().numpy() - m2_64) <= bound)
        assert np.all(np.abs(generic_m2.double().numpy() - m2_64) <= bound)


def test_torch_local_moments_differentiate_as_the_generic_kernel(torch_fast):
    torch = pytest.importorskip("torch")
    from bn_portable._kernels import _moments

    xp = _torch_xp()
    x = torch.randn(16, 32, 12, 12, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 32, 1, 1, dtype=torch.float64)
    grads = []
    for kernel in (torch_fast.local_moments, _moments.local_moments.generic):
        mean, m2 = kernel(x, (0, 2, 3), xp=xp)
        (gradient,) = torch.autograd.grad(((mean + m2) * weights).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad((gradient * gradient).sum(), x)
        grads.append((gradient.detach(), second))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10, atol=1e-10)


def test_torch_local_moments_decline_what_they_do_not_cover(torch_fast):
    torch = pytest.importorskip("torch")
    xp = _torch_xp()
    big = torch.randn(16, 32, 12, 12)
    assert torch_fast.local_moments(big[:2], (0, 2, 3), xp=xp) is NotImplemented  # small
    assert torch_fast.local_moments(big.half(), (0, 2, 3), xp=xp) is NotImplemented
    assert torch_fast.local_moments(big, (0, 1, 3), xp=xp) is NotImplemented  # channel on axis 2
    assert torch_fast.local_moments(big, (0, 2), xp=xp) is NotImplemented  # two kept axes
    strided = big[:, :, ::2]  # neither layout dense: the generic kernel
    assert torch_fast.local_moments(strided, (0, 2, 3), xp=xp) is NotImplemented
    # A half batch only widened to float32; float32 not narrowed.
    assert torch_fast.local_moments(big.half(), (0, 2, 3), xp=xp, compute=torch.float64) is NotImplemented
    assert torch_fast.local_moments(big, (0, 2, 3), xp=xp, compute=torch.float16) is NotImplemented


@pytest.mark.parametrize("block_elements", [None, 4096], ids=["whole", "blocks"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NCHW-channels-last", "rows"])
def test_torch_local_moments_blocked_and_widened(torch_fast, monkeypatch, layout, dtype, block_elements):
    """Every dense layout, half input widened (compute=float32), whole or in cache-sized
    blocks: within a few ulps of the extended-precision moments of the widened values."""
    torch = pytest.importorskip("torch")
    _small_torch_blocks(monkeypatch, torch_fast, block_elements)
    xp = _torch_xp()
    shape, channel = {"NHWC": ((16, 12, 12, 32), 3), "rows": ((4096, 24), 1)}.get(layout, ((16, 32, 12, 12), 1))
    axes = tuple(axis for axis in range(len(shape)) if axis != channel)
    for loc in (0.5, 1e3):
        values = np.random.default_rng(5).normal(loc, 1.0, shape)
        tensor = torch.from_numpy(values).to(getattr(torch, dtype))
        if layout == "NCHW-channels-last":
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        compute = None if dtype == "float32" else torch.float32
        mean, m2 = torch_fast.local_moments(tensor, axes, xp=xp, compute=compute)
        assert mean.dtype == m2.dtype == torch.float32
        x64 = tensor.double().numpy().astype(np.longdouble)  # the values as given, exactly
        mean64 = x64.mean(axis=axes, keepdims=True)
        m2_64 = ((x64 - mean64) ** 2).sum(axis=axes, keepdims=True)
        eps = float(np.finfo(np.float32).eps)
        assert np.all(np.abs(mean.double().numpy() - mean64) <= 2 * eps * np.abs(mean64) + 2 * eps)
        assert np.all(np.abs(m2.double().numpy() - m2_64) <= 4 * eps * m2_64 * (1 + loc))


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no-autograd", "autograd"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NCHW-channels-last", "rows"])
def test_torch_fused_training_y_from_the_centred_values(torch_fast, layout, requires_grad):
    """float32 on CPU, taken whole: y is scaled and shifted from the statistics' centred
    values. The same bits as TensorFlow's three operations from the returned statistics, in
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
    view = [1] * x.ndim
    view[channel] = -1
    factor = (torch.reciprocal(torch.sqrt(variance + EPSILON)) * scale).view(view)
    expected = torch.sub(x.detach(), mean.view(view)).mul_(factor).add_(offset.view(view))
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

"""The NumPy fast paths of the forward (statistics, normalization) against the generic kernels.

The tolerances are those of ``fast_paths_cases``.
"""

from __future__ import annotations

import math

import array_api_compat.numpy as NP  # the namespace the library hands its kernels
import numpy as np
import pytest

import bn_portable as bn
import fast_paths_cases
from bn_portable._kernels import _moments, _normalize
from fast_paths_cases import (
    EPSILON,
    FLOAT_DTYPES,
    LAYOUTS,
    RNG,
    SUM_ULPS,
    _assert_statistics_close,
    _assert_y_close,
    _axes,
    _data,
    _reference,
    _ulps_of_scale,
)

# The fixtures of fast_paths_cases this module uses (pytest finds them by these names).
_seed_per_test = fast_paths_cases._seed_per_test
numpy_fast = fast_paths_cases.numpy_fast


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

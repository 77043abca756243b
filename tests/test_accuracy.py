"""Accurate sums on every backend: ill-conditioned batches, float64, bfloat16, empty batches.

The references are float64 NumPy computations on the same inputs (``math.fsum``
where a sum itself is checked). TensorFlow's own figures for the same kind of
data are in the ``ill_conditioned`` conformance goldens.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from conformance.backends import Backend

import bn_portable as bn
from bn_portable._lib._sums import accurate_sum

#: TensorFlow's float32 tree sums give 1.6e-4 relative on the issue's data; a
#: running float32 sum 0.3. Every path must do at least as well as TensorFlow.
TF_RELATIVE_ERROR = 1.6e-4


def _issue_batch(seed: int = 9) -> np.ndarray:
    """The issue's reproduction: float32 NHWC (31, 16, 16, 8), mean 12345.678, std 1."""
    rng = np.random.default_rng(seed)
    return (12345.678 + rng.standard_normal((31, 16, 16, 8))).astype(np.float32)


def _relative(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    return float(np.max(np.abs(actual - expected) / np.abs(expected)))


def _reference_variance(x: np.ndarray, axes=(0, 1, 2), weights=None) -> np.ndarray:
    x64 = x.astype(np.float64)
    if weights is None:
        return x64.var(axis=axes)
    w = np.broadcast_to(weights.astype(np.float64), x.shape)
    mean = (w * x64).sum(axis=axes, keepdims=True) / w.sum(axis=axes, keepdims=True)
    return ((w * (x64 - mean) ** 2).sum(axis=axes) / w.sum(axis=axes))


def test_issue_reproduction_moments(backend: Backend) -> None:
    x = _issue_batch()
    mean, variance = backend.call(lambda a: bn.moments(a, [0, 1, 2]), backend.asarray(x, "float32"))
    assert _relative(backend.to_numpy(variance), _reference_variance(x)) < TF_RELATIVE_ERROR
    assert _relative(backend.to_numpy(mean), x.astype(np.float64).mean(axis=(0, 1, 2))) < 1e-6


def test_issue_reproduction_weighted_moments(backend: Backend) -> None:
    x = _issue_batch()
    weights = np.random.default_rng(1).uniform(0.05, 2.0, (31, 1, 1, 1)).astype(np.float32)
    _, variance = backend.call(
        lambda a, w: bn.weighted_moments(a, [0, 1, 2], w),
        backend.asarray(x, "float32"),
        backend.asarray(weights, "float32"),
    )
    assert _relative(backend.to_numpy(variance), _reference_variance(x, weights=weights)) < TF_RELATIVE_ERROR


@pytest.mark.parametrize(
    "weight_shape",
    [(31, 1, 1, 1), (31, 16, 1, 1), (1, 16, 16, 1), (31, 1, 1, 8), (16, 1, 8), (31, 16, 16, 8)],
    ids=lambda shape: "x".join(map(str, shape)),
)
def test_weighted_moments_whatever_the_weights_vary_along(backend: Backend, weight_shape) -> None:
    """Weighted sums are taken over the axes where the weights are constant first: mean and
    variance of the ill-conditioned batch as accurate for every way the weights broadcast,
    constant or varying along reduced and kept axes."""
    x = _issue_batch()
    weights = np.random.default_rng(2).uniform(0.05, 2.0, weight_shape).astype(np.float32)
    mean, variance = backend.call(
        lambda a, w: bn.weighted_moments(a, [0, 1, 2], w),
        backend.asarray(x, "float32"),
        backend.asarray(weights, "float32"),
    )
    w = np.broadcast_to(weights.astype(np.float64), x.shape)
    expected_mean = (w * x.astype(np.float64)).sum(axis=(0, 1, 2)) / w.sum(axis=(0, 1, 2))
    assert _relative(backend.to_numpy(mean), expected_mean) < 1e-6
    assert _relative(backend.to_numpy(variance), _reference_variance(x, weights=weights)) < TF_RELATIVE_ERROR


def test_issue_reproduction_fused_batch_norm(backend: Backend) -> None:
    x = _issue_batch()
    ones, zeros = np.ones(8, np.float32), np.zeros(8, np.float32)
    _, _, variance = backend.call(
        lambda a, s, o: bn.fused_batch_norm(a, s, o),
        *(backend.asarray(v, "float32") for v in (x, ones, zeros)),
    )
    n = 31 * 16 * 16
    expected = _reference_variance(x) * n / (n - 1)  # the kernel returns the Bessel-corrected variance
    assert _relative(backend.to_numpy(variance), expected) < TF_RELATIVE_ERROR


@pytest.mark.parametrize(
    "options",
    [{"fused": True}, {"fused": False}, {"fused": False, "weighted": True}, {"zero_debias_moving_mean": True}],
    ids=["fused", "layer", "weighted", "zero_debias"],
)
def test_issue_reproduction_batch_norm(backend: Backend, options: dict) -> None:
    """The layer's moving variance with decay 0 is the batch variance TensorFlow's path returns."""
    x = _issue_batch()
    options = dict(options)
    weights = None
    if options.pop("weighted", False):
        weights = np.random.default_rng(2).uniform(0.05, 2.0, (31,)).astype(np.float32)
    call = dict(decay=0.0, **options)
    arguments = [backend.asarray(x, "float32")]
    if weights is not None:
        arguments.append(backend.asarray(weights, "float32"))
        state = backend.call(lambda a, w: bn.batch_norm(a, None, batch_weights=w, **call)[1], *arguments)
        expected = _reference_variance(x, weights=weights.reshape(31, 1, 1, 1))
    else:
        state = backend.call(lambda a: bn.batch_norm(a, None, **call)[1], *arguments)
        expected = _reference_variance(x)
    moving = backend.to_numpy(state.moving_variance).astype(np.float64)
    # Some of TensorFlow's paths keep the biased and some the Bessel-corrected
    # variance; both are within n/(n − 1) − 1 = 1.3e-4 of each other.
    n = 31 * 16 * 16
    error = min(_relative(moving, expected), _relative(moving, expected * n / (n - 1)))
    assert error < TF_RELATIVE_ERROR


def test_float64_sums_are_pairwise(backend: Backend) -> None:
    """2²⁰ float64 values: a running sum drifts by 1.5e-11, TensorFlow's tree by ~1e-16."""
    if "float64" not in backend.dtypes:
        pytest.skip(f"{backend.name} has no float64")
    x = np.full((1 << 18, 4), 0.1)
    exact = math.fsum(x[:, 0])
    xp = backend.xp
    total = backend.call(lambda a: accurate_sum(a, (0,), xp), backend.asarray(x, "float64"))
    assert _relative(backend.to_numpy(total), exact) < 1e-13


def test_float64_moments_ill_conditioned(backend: Backend) -> None:
    if "float64" not in backend.dtypes:
        pytest.skip(f"{backend.name} has no float64")
    rng = np.random.default_rng(3)
    x = 1.0e9 + rng.standard_normal((64, 32, 32, 3))
    _, variance = backend.call(lambda a: bn.moments(a, [0, 1, 2]), backend.asarray(x, "float64"))
    centered = x - np.array([math.fsum(x[..., c].ravel()) / x[..., c].size for c in range(3)])
    expected = np.array([math.fsum((centered[..., c] ** 2).ravel()) / x[..., c].size for c in range(3)])
    assert _relative(backend.to_numpy(variance), expected) < 1e-6


def test_bfloat16_numpy_arrays_accumulate_in_float32_or_wider() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    ones = np.ones(4096, dtype=ml_dtypes.bfloat16)
    mean, variance = bn.moments(ones, 0)
    assert mean.dtype == ones.dtype and float(mean) == 1.0 and float(variance) == 0.0
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 1.0, (64, 64)).astype(ml_dtypes.bfloat16)
    mean, variance = bn.moments(x, [0])
    reference = x.astype(np.float64)
    # one rounding of the float64 sum to bfloat16, then one of the division
    assert _relative(mean, reference.mean(axis=0)) <= 2 * 2.0**-8
    weights = np.ones((64, 1), dtype=ml_dtypes.bfloat16)
    w_mean, _ = bn.weighted_moments(x, [0], weights)
    assert _relative(w_mean, reference.mean(axis=0)) <= 2 * 2.0**-8


def _no_warnings(function, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return function(*args)


def test_empty_batch_is_silent(backend: Backend) -> None:
    """TensorFlow returns NaN statistics for an empty batch (0/0), and warns about nothing."""
    x = backend.asarray(np.zeros((0, 2, 2, 3), np.float32), "float32")
    mean, variance = _no_warnings(backend.call, lambda a: bn.moments(a, [0, 1, 2]), x)
    assert np.all(np.isnan(backend.to_numpy(mean))) and np.all(np.isnan(backend.to_numpy(variance)))
    weights = backend.asarray(np.zeros((0, 1, 1, 1), np.float32), "float32")
    w_mean, w_variance = _no_warnings(
        backend.call, lambda a, w: bn.weighted_moments(a, [0, 1, 2], w), x, weights
    )
    # div_no_nan: a zero total weight gives 0
    assert np.all(backend.to_numpy(w_mean) == 0) and np.all(backend.to_numpy(w_variance) == 0)
    for fused in (True, False):
        y, state = _no_warnings(backend.call, lambda a, f=fused: bn.batch_norm(a, None, fused=f), x)
        assert backend.to_numpy(y).shape == (0, 2, 2, 3)
        assert backend.to_numpy(state.moving_mean).shape == (3,)


def test_accurate_sum_matches_sum_semantics(backend: Backend) -> None:
    """Dtype, keepdims and values of a plain sum, on every dtype the backend holds."""
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, (5, 4, 3))
    xp = backend.xp
    for dtype in ("float16", "float32", "float64"):
        if dtype not in backend.dtypes:
            continue
        array = backend.asarray(x, dtype)
        for keepdims in (False, True):
            total = backend.call(lambda a, k=keepdims: accurate_sum(a, (0, 2), xp, keepdims=k), array)
            expected = x.astype(dtype).astype(np.float64).sum(axis=(0, 2), keepdims=keepdims)
            assert total.dtype == array.dtype
            assert backend.to_numpy(total).shape == expected.shape
            tolerance = 4 * float(np.finfo(dtype).eps) * np.abs(x).sum() / 4
            np.testing.assert_allclose(backend.to_numpy(total), expected, atol=tolerance)


def test_dask_stays_lazy_and_accurate_across_chunks() -> None:
    da = pytest.importorskip("dask.array")
    import array_api_compat.dask.array as xp

    x = _issue_batch()
    for chunks in (x.shape, (8, 16, 16, 8)):
        lazy = da.from_array(x, chunks=chunks)
        _, variance = bn.moments(lazy, [0, 1, 2])
        assert isinstance(variance, da.Array)
        assert _relative(variance.compute(), _reference_variance(x)) < TF_RELATIVE_ERROR
        total = accurate_sum(lazy, (0, 1, 2), xp)
        assert isinstance(total, da.Array) and total.dtype == np.float32
    # unknown chunk sizes (after boolean indexing): the count is taken lazily
    unknown = da.from_array(x, chunks=(8, 16, 16, 8))[da.from_array(np.ones(31, bool), chunks=8)]
    assert np.isnan(unknown.shape[0])
    _, variance = bn.moments(unknown, [0, 1, 2])
    assert _relative(variance.compute(), _reference_variance(x)) < TF_RELATIVE_ERROR


def test_bfloat16_numpy_arrays_match_tensorflow_goldens() -> None:
    """The bfloat16 ``moments`` goldens, replayed on NumPy arrays of ml_dtypes' bfloat16."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from conformance import catalogue, runner
    from conformance.compare import TOLERANCES, error_in_epsilons

    goldens = runner.Goldens()
    cases = [c for c in catalogue.cases() if c["op"] == "moments" and c["dtype"] == "bfloat16"]
    assert cases
    for case in cases:
        arrays = goldens.arrays(case)
        x = arrays["x"].astype(ml_dtypes.bfloat16)  # stored as float32 holding bfloat16 values
        mean, variance = bn.moments(x, case["kwargs"]["axes"], keepdims=case["kwargs"]["keepdims"])
        assert mean.dtype == x.dtype
        for name, value in (("mean", mean), ("variance", variance)):
            error = error_in_epsilons(value.astype(np.float32), arrays[name], "bfloat16")
            assert error <= TOLERANCES["bfloat16"], (case["id"], name, error)

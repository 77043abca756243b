"""``partial_moments``, ``merge_moments`` and ``PartialMoments.mean_variance`` on every backend."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conformance.backends import Backend
from conformance.compare import error_in_epsilons

import bn_portable as bn

RNG = np.random.default_rng(20261201)


def _population(x, axes, weights=None):
    x = np.asarray(x, np.float64)
    w = np.ones_like(x) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), x.shape)
    count = w.sum(axis=axes)
    mean = (w * x).sum(axis=axes) / count
    m2 = (w * (x - np.expand_dims(mean, axes)) ** 2).sum(axis=axes)
    return count, mean, m2


def _assert_close(actual, expected, dtype="float32", what=""):
    error = error_in_epsilons(np.asarray(actual), np.asarray(expected), dtype)
    assert error <= 64, f"{what}: {error:.3g} {dtype} epsilons off"


def _check(backend, summary, expected, dtype="float32"):
    for name, actual, reference in zip(("count", "mean", "m2"), summary, expected):
        _assert_close(backend.to_numpy(actual), reference, dtype, name)


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_partial_moments_of_one_chunk(backend: Backend, weighted: bool) -> None:
    x = (RNG.standard_normal((12, 3, 5)) * 2 + 100).astype(np.float32)
    w = RNG.uniform(0, 2, (12, 1, 1)).astype(np.float32) if weighted else None
    kwargs = {"frequency_weights": backend.asarray(w, "float32")} if weighted else {}
    summary = backend.call(lambda x: tuple(bn.partial_moments(x, (0, 1), **kwargs)), backend.asarray(x, "float32"))
    _check(backend, summary, _population(x, (0, 1), w))


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_merging_chunks_in_any_order_gives_the_whole(backend: Backend, weighted: bool) -> None:
    # |mean|/σ = 10: merging rounds each chunk's mean at the mean's magnitude
    # (see merge_moments), which the tolerance covers up to |mean|/σ of about 100.
    x = (RNG.standard_normal((40, 4)) * 2.0 + 20.0).astype(np.float32)
    w = RNG.uniform(0, 3, (40, 1)).astype(np.float32) if weighted else None
    bounds = [0, 7, 7, 20, 21, 40]  # one empty chunk and one single sample
    xp_x = backend.asarray(x, "float32")
    xp_w = backend.asarray(w, "float32") if weighted else None

    def summaries(x, w):
        parts = [
            bn.partial_moments(x[a:b, ...], 0, frequency_weights=None if w is None else w[a:b, ...])
            for a, b in itertools.pairwise(bounds)
        ]
        forward = bn.merge_moments(*parts)
        backward = bn.merge_moments(*reversed(parts))
        nested = bn.merge_moments(bn.merge_moments(parts[3], parts[0]), bn.merge_moments(*parts[1:3], parts[4]))
        return tuple(forward), tuple(backward), tuple(nested)

    results = backend.call(summaries, xp_x, xp_w)
    expected = _population(x, 0, w)
    for summary in results:
        _check(backend, summary, expected)


def test_mean_variance_conventions(backend: Backend) -> None:
    x = RNG.standard_normal((9, 3)).astype(np.float32)
    summary = bn.partial_moments(backend.asarray(x, "float32"), 0)
    with backend.context():
        mean, biased = summary.mean_variance()
        _, bessel = summary.mean_variance(bessel=True)
    _assert_close(backend.to_numpy(mean), x.astype(np.float64).mean(0), what="mean")
    _assert_close(backend.to_numpy(biased), x.astype(np.float64).var(0), what="biased variance")
    _assert_close(backend.to_numpy(bessel), x.astype(np.float64).var(0, ddof=1), what="Bessel variance")


def test_empty_and_single_sample() -> None:
    empty = bn.partial_moments(np.zeros((0, 3), np.float32), 0)
    np.testing.assert_array_equal(empty.count, 0)
    mean, variance = empty.mean_variance()
    np.testing.assert_array_equal(mean, 0)
    np.testing.assert_array_equal(variance, 0)
    one = bn.partial_moments(np.full((1, 3), 5.0, np.float32), 0)
    merged = bn.merge_moments(empty, one, empty)
    np.testing.assert_array_equal(merged.mean, 5.0)
    np.testing.assert_array_equal(merged.mean_variance(bessel=True)[1], 0.0)


def test_half_precision_is_summarized_in_float32() -> None:
    x = RNG.standard_normal((64, 3)).astype(np.float16)
    summary = bn.partial_moments(x, 0)
    assert summary.mean.dtype == np.float32 and summary.count.dtype == np.float32
    _check(type("B", (), {"to_numpy": staticmethod(np.asarray)}), summary, _population(x, 0))


def test_validation() -> None:
    x = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match="x must have a real floating dtype"):
        bn.partial_moments(np.ones((4, 3), np.int32), 0)
    with pytest.raises(ValueError, match="axes must be in"):
        bn.partial_moments(x, 2)
    with pytest.raises(ValueError, match="frequency_weights must broadcast"):
        bn.partial_moments(x, 0, frequency_weights=np.ones((5, 1), np.float32))
    with pytest.raises(TypeError, match="at least one PartialMoments"):
        bn.merge_moments()
    with pytest.raises(TypeError, match=r"parts\[1\] must be a PartialMoments"):
        bn.merge_moments(bn.partial_moments(x, 0), (1, 2, 3))
    with pytest.raises(ValueError, match=r"parts\[1\]\.count has shape \(4,\)"):
        bn.merge_moments(bn.partial_moments(x, 0), bn.partial_moments(x, 1))
    with pytest.raises(TypeError, match="bessel must be a Python bool"):
        bn.partial_moments(x, 0).mean_variance(bessel=1)

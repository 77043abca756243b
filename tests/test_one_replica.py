"""One replica is the plain call: with the identity as reducer, every statistic is bit-identical.

The synchronized statistics and the local ones come from one moments kernel
with one dtype rule per caller, so a reducer that sums over a single replica
must change nothing, on every dtype and backend. (Before the kernel was one,
``moments`` kept bfloat16 and its synchronized form widened it: with
x = normal(257×4) + 37.3 in bfloat16 the variances were 1.039 and 0.973.)

The inputs stay below the NumPy fast paths' size threshold: a fast path sums
in another order than the generic kernel, within the accuracy contract but
not bit for bit, and the synchronized form always takes the generic kernel.
The layer paths are compared with the fast paths off for the same reason.
"""

from __future__ import annotations

import numpy as np
import pytest
from conformance.backends import Backend
from hypothesis import given
from hypothesis import strategies as st

import bn_portable as bn


def identity(array):
    return array


DTYPES = ("float16", "bfloat16", "float32", "float64")


def _batch(seed: int, shape: tuple[int, ...], offset: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) + offset


def _assert_identical(ours, expected, what: str) -> None:
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    assert ours.shape == expected.shape, what
    np.testing.assert_array_equal(ours, expected, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(257, 4), (6, 5, 3), (1, 7), (0, 3)]),
    offset=st.sampled_from([0.0, 37.3, -1e3]),
)
def test_moments_with_one_replica_are_the_plain_moments(backend: Backend, dtype, seed, shape, offset):
    if dtype not in backend.dtypes:
        pytest.skip(f"{backend.name} has no {dtype}")
    x = backend.asarray(_batch(seed, shape, offset), dtype)
    weights = backend.asarray(np.random.default_rng(seed).uniform(0, 2, shape[:1] + (1,) * (len(shape) - 1)), dtype)
    with backend.context():
        plain = backend.call(lambda a: bn.moments(a, [0]), x)
        synced = backend.call(lambda a: bn.moments(a, [0], cross_replica_sum=identity), x)
        weighted = backend.call(lambda a, w: bn.weighted_moments(a, [0], w), x, weights)
        weighted_synced = backend.call(
            lambda a, w: bn.weighted_moments(a, [0], w, cross_replica_sum=identity), x, weights
        )
    for name, ours, expected in (
        ("moments", synced, plain),
        ("weighted_moments", weighted_synced, weighted),
    ):
        for part, a, b in zip(("mean", "variance"), ours, expected):
            _assert_identical(backend.to_numpy(a), backend.to_numpy(b), f"{name} {part} {dtype}")


LAYER_OPTIONS = {
    "keras": {},
    "keras-fused": {"fused": True},
    "legacy": {"zero_debias_moving_mean": True},
    "slim-fused": {"fused": True, "zero_debias_moving_mean": True},
    "renorm": {"renorm": True},
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", sorted(LAYER_OPTIONS))
def test_the_layer_with_one_replica_is_the_plain_layer(backend: Backend, path: str, dtype: str):
    if dtype not in backend.dtypes:
        pytest.skip(f"{backend.name} has no {dtype}")
    options = LAYER_OPTIONS[path]
    if dtype == "float64" and ("fused" in options or "renorm" in options):
        pytest.skip("TensorFlow's fused kernel and renorm take no float64")
    x = backend.asarray(_batch(11, (6, 3, 3, 4), 37.3), dtype)
    with backend.context(), bn.fast_paths(False):
        plain = backend.call(lambda a: bn.batch_norm(a, **options), x)
        synced = backend.call(lambda a: bn.batch_norm(a, cross_replica_sum=identity, **options), x)
    _assert_identical(backend.to_numpy(synced[0]), backend.to_numpy(plain[0]), f"y {path}")
    for field, value in plain[1]._asdict().items():
        if value is not None:
            _assert_identical(
                backend.to_numpy(getattr(synced[1], field)), backend.to_numpy(value), f"{field} {path}"
            )


def test_the_reported_bfloat16_case():
    """The issue's reproduction: 50 seeds, every one differed."""
    torch = pytest.importorskip("torch")
    for seed in range(50):
        x = torch.from_numpy(_batch(seed, (257, 4), 37.3)).to(torch.bfloat16)
        mean, variance = bn.moments(x, [0])
        synced_mean, synced_variance = bn.moments(x, [0], cross_replica_sum=identity)
        assert torch.equal(mean, synced_mean) and torch.equal(variance, synced_variance), seed

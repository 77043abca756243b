"""Inputs TensorFlow accepts that bn_portable once refused, checked against what TensorFlow does.

What TensorFlow 2.15.1 (tf-slim 1.1.0, tf-keras 2.15.1, graph mode) was seen to do:

- ``tf_slim.layers.batch_norm(x, epsilon=0.0)`` runs on every path (Keras layer,
  Keras fused, tf-slim fused, tf-slim legacy with batch_weights, renorm); a channel
  whose batch variance is 0 comes out NaN (0·inf), every other channel is finite,
  and the moving statistics stay finite. bn_portable agreed with it to the
  float32 rounding on all five paths, the NaN pattern included.
- ``renorm_clipping`` with ``rmax=inf``, ``dmax=inf`` or ``rmin=-inf`` gives
  exactly the unclipped output (TensorFlow's documented "no bound"). ``rmin=inf``
  makes the output non-finite, ``rmin > rmax`` and a negative ``dmax`` clip to an
  empty range, ``nan`` poisons the output: TensorFlow runs them anyway;
  bn_portable refuses them as meaningless (tests/test_validation.py).
- ``tf.nn.weighted_moments`` casts ``frequency_weights`` of any dtype to x's:
  int32, int64, uint8, float16, float64 and bool all run (bool as 0/1), and so do
  complex weights, whose imaginary part the cast drops silently; bn_portable
  refuses complex weights for that reason.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import bn_portable as bn

RNG = np.random.default_rng(11)
X = RNG.normal(1.0, 2.0, size=(4, 3, 2, 5)).astype(np.float32)

PATHS = {
    "keras_layer": {},
    "keras_fused": {"fused": True},
    "slim_fused": {"fused": True, "zero_debias_moving_mean": True},
    "legacy": {"batch_weights": np.ones(4, np.float32)},
    "renorm": {"renorm": True},
}


@pytest.mark.parametrize("path", [p for p in PATHS if p != "renorm"])  # renorm's r, d ≠ 1, 0
def test_epsilon_zero_is_accepted_and_normalizes_exactly(path):
    y, state = bn.batch_norm(X, epsilon=0.0, **PATHS[path])
    x64 = X.astype(np.float64)
    mean, variance = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    expected = (x64 - mean) / np.sqrt(variance)
    np.testing.assert_allclose(y, expected, rtol=0, atol=2e-5)
    assert all(np.isfinite(value).all() for value in state if value is not None)


@pytest.mark.parametrize("path", list(PATHS))
def test_epsilon_zero_with_a_constant_channel_gives_nan_there_as_tensorflow(path):
    x = X.copy()
    x[..., 0] = 1.5
    with np.errstate(divide="ignore", invalid="ignore"):
        y, state = bn.batch_norm(x, epsilon=0.0, **PATHS[path])
    assert np.isnan(y[..., 0]).all()
    assert np.isfinite(y[..., 1:]).all()
    assert all(np.isfinite(value).all() for value in state if value is not None)


@pytest.mark.parametrize(
    "clipping",
    [{"rmax": math.inf}, {"dmax": math.inf}, {"rmin": -math.inf},
     {"rmin": -math.inf, "rmax": math.inf, "dmax": math.inf}, {"rmin": -3.0}, {"rmin": 0.0}],
)
def test_infinite_renorm_clipping_means_no_bound(clipping):
    # renorm r and d differ from 1 and 0 only from the second step on.
    _, state = bn.batch_norm(X, renorm=True)
    x = RNG.normal(3.0, 0.5, size=X.shape).astype(np.float32)
    y, new_state = bn.batch_norm(x, state, renorm=True, renorm_clipping=clipping)
    y_free, free_state = bn.batch_norm(x, state, renorm=True)
    np.testing.assert_array_equal(y, y_free)
    for value, free in zip(new_state, free_state):
        np.testing.assert_array_equal(value, free)
    # and a finite bound does clip here, so the comparison above could fail
    y_clipped, _ = bn.batch_norm(x, state, renorm=True, renorm_clipping={"rmax": 1.0, "dmax": 0.1})
    assert not np.array_equal(y_clipped, y_free)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "float16", "float64", "bool"])
def test_frequency_weights_of_any_real_dtype_are_cast_to_x_dtype(dtype):
    weights = np.array([1, 0, 2, 1]).astype(dtype).reshape(4, 1, 1, 1)
    mean, variance = bn.weighted_moments(X, (0, 1, 2), weights)
    expected = bn.weighted_moments(X, (0, 1, 2), weights.astype(np.float32))
    assert mean.dtype == variance.dtype == np.float32
    np.testing.assert_array_equal(mean, expected[0])
    np.testing.assert_array_equal(variance, expected[1])


@pytest.mark.parametrize("dtype", ["int32", "float64", "bool"])
def test_batch_weights_of_any_real_dtype_are_cast_to_x_dtype(dtype):
    weights = np.array([1, 0, 1, 1]).astype(dtype)
    y, state = bn.batch_norm(X, batch_weights=weights)
    y_ref, state_ref = bn.batch_norm(X, batch_weights=weights.astype(np.float32))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(state.moving_variance, state_ref.moving_variance)


def test_complex_frequency_weights_are_refused():
    with pytest.raises(TypeError, match="frequency_weights must have a real floating, integer or bool"):
        bn.weighted_moments(X, 0, np.ones(5, np.complex64))

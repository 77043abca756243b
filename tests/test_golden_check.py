"""The golden check's one allowance: processor-dependent rounding of TensorFlow's CPU kernels."""

from __future__ import annotations

import numpy as np
import pytest
from conformance.generate import PROCESSOR_ULPS, close_across_processors

EPS32 = float(np.finfo(np.float32).eps)


def _golden() -> np.ndarray:
    return np.array([0.5, -2.0, 1.25, 0.0, np.nan, np.inf], dtype=np.float32)


def test_identical_arrays_are_zero_epsilons_apart():
    assert close_across_processors(_golden(), _golden()) == 0.0


def test_a_few_epsilons_of_the_scale_are_allowed_and_measured():
    regenerated = _golden()
    regenerated[0] += np.float32(3 * 2.0 * EPS32)  # 3 epsilons of the largest finite value, 2.0
    assert close_across_processors(_golden(), regenerated) == pytest.approx(3.0)


def test_more_than_the_bound_is_a_difference():
    regenerated = _golden()
    regenerated[2] += np.float32((PROCESSOR_ULPS + 1) * 2.0 * EPS32)
    assert close_across_processors(_golden(), regenerated) is None


@pytest.mark.parametrize("position, value", [(4, 1.0), (5, -np.inf), (0, np.nan)])
def test_nan_and_infinities_must_stay_where_they_are(position, value):
    regenerated = _golden()
    regenerated[position] = value
    assert close_across_processors(_golden(), regenerated) is None


def test_non_floating_arrays_must_be_identical():
    committed = np.arange(4, dtype=np.int32)
    assert close_across_processors(committed, committed + 1) is None


def test_a_zero_array_allows_no_difference():
    committed = np.zeros(3, dtype=np.float32)
    assert close_across_processors(committed, committed + np.float32(1e-30)) is None

"""The golden check's one allowance: processor-dependent rounding of TensorFlow's CPU kernels."""

from __future__ import annotations

import numpy as np
import pytest
from conformance.compare import (
    PROCESSOR_ULPS,
    close_across_processors,
    difference_lines,
    stored_differences,
)

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


def _ill_conditioned_batch() -> tuple[np.ndarray, np.ndarray]:
    """x with a mean 10⁴ times its spread, and its normalized y (the golden's pair)."""
    x = (1e4 + np.random.default_rng(0).standard_normal(1000)).astype(np.float32)
    y = ((x - x.mean()) / x.std()).astype(np.float32)
    return x, y


def test_a_normalized_output_is_measured_against_its_input():
    # 100 epsilons of y's scale is what a one-ulp change of the mean does to y
    # here; against the input x it is far below one epsilon.
    x, y = _ill_conditioned_batch()
    regenerated = y.copy()
    regenerated[0] += np.float32(100 * EPS32 * np.abs(y).max())
    assert close_across_processors(y, regenerated) is None
    ulps = close_across_processors(y, regenerated, source=x)
    assert ulps is not None and ulps < 1.0


def test_a_normalized_output_still_has_a_bound():
    x, y = _ill_conditioned_batch()
    regenerated = y.copy()
    regenerated[0] += np.float32(10 * 1e4 * (PROCESSOR_ULPS + 1) * EPS32)  # 10 × the bound at |x| = 1e4
    assert close_across_processors(y, regenerated, source=x) is None


def test_stored_files_are_compared_array_by_array_with_the_same_allowance():
    """``stored_differences`` (the checkpoint, whole-model and convention checks): identical
    arrays pass silently, arrays within the bound are listed with their epsilons, others fail."""
    committed = {"a": _golden(), "counts": np.array([1, 2, 3]), "name": np.array(b"bn")}
    assert stored_differences(committed, dict(committed)) == ([], [])
    close = _golden()
    close[0] += np.float32(3 * 2.0 * EPS32)
    far = _golden()
    far[1] = 1.0
    differences, within = stored_differences(committed, {**committed, "a": close})
    assert differences == [] and within == [("a", pytest.approx(3.0))]
    assert stored_differences(committed, {**committed, "a": far}) == (["a"], [])
    assert stored_differences(committed, {**committed, "counts": np.array([1, 2, 4])}) == (["counts"], [])
    assert stored_differences(committed, {**committed, "a": close.astype(np.float64)})[0] == ["a"]
    assert stored_differences(committed, {"a": _golden()})[0][0].startswith("other arrays")


def test_a_stored_output_is_measured_against_its_input_where_given():
    x = np.linspace(1e4, 1e4 + 1.0, 64, dtype=np.float32)  # a mean 10⁴ times the spread
    y = ((x - x.mean()) / x.std()).astype(np.float32)
    shifted = y + np.float32(200 * EPS32 * float(np.abs(y).max()))  # one ulp of the mean, amplified
    arrays = {"input|bn": x, "infer|bn": y}
    assert stored_differences(arrays, {**arrays, "infer|bn": shifted})[0] == ["infer|bn"]
    differences, within = stored_differences(
        arrays, {**arrays, "infer|bn": shifted}, lambda key: (x, None) if key == "infer|bn" else (None, None)
    )
    assert differences == [] and within[0][0] == "infer|bn"


def test_the_report_lists_what_is_close_and_the_first_differences():
    lines = difference_lines("f.npz", [f"k{i}" for i in range(12)], [("y", 1.5)], shown=10)
    assert lines[0] == "  ~ f.npz: y: within 1.50 epsilons (processor-dependent vectorization)"
    assert lines[1:11] == [f"  - f.npz: k{i}" for i in range(10)] and lines[11] == "  - f.npz: 2 more"
    assert difference_lines("f.npz", [], []) == []

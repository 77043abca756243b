"""Shared tolerances and comparison of the backward-pass tests (``test_grad*.py``)."""

from __future__ import annotations

import numpy as np

TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}


def assert_close(actual, expected, rtol, what=""):
    """Normwise: max |actual − expected| ≤ rtol·max |expected| (elementwise ulps of sums vary)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    error = float(np.abs(actual - expected).max(initial=0.0))
    assert error <= rtol * scale, f"{what}: max error {error:.3e} > {rtol:.0e} x {scale:.3e}"

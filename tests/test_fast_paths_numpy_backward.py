"""The NumPy fast paths of the backward (gradient sums and input) against the generic kernels.

The tolerances are those of ``fast_paths_cases``.
"""

from __future__ import annotations

import array_api_compat.numpy as NP  # the namespace the library hands its kernels
import numpy as np
import pytest

import fast_paths_cases
from bn_portable._kernels import _backward
from fast_paths_cases import LAYOUTS, RNG, SUM_ULPS, _axes, _backward_constants, _data

# The fixtures of fast_paths_cases this module uses (pytest finds them by these names).
_seed_per_test = fast_paths_cases._seed_per_test
numpy_fast = fast_paths_cases.numpy_fast


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

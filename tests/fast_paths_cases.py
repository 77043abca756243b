"""Shared data, tolerances and fixtures of the fast-path tests (``test_fast_paths*.py``).

Each fast path is called directly (so that a silent ``NotImplemented`` cannot
make a test pass by running the generic code) and compared with the generic
kernel (``kernel.generic``) on the same input.

Tolerances, and why:

- Elementwise steps the fast path performs with the same operations on the same
  operands (NumPy ``fused_inference`` and ``normalize``, PyTorch ``normalize``)
  must be **bit-identical**. PyTorch's fused formula scales and shifts the
  centred values with one fused multiply-add where the channels are innermost
  in memory: there y must be that operation's single rounding, exactly
  (``torch_fused_formula``), elsewhere the generic kernel's bits.
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

import zlib

import numpy as np
import pytest

from bn_portable._native import _numpy as numpy_kernels
from bn_portable._native._numpy import _plan as numpy_plan

SUM_ULPS = 4
Y_ULPS = 8
GRAD_RTOL = 1e-5
EPSILON = 1e-3
RNG = np.random.default_rng(20261127)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Each test draws its own data, whatever ran before it.

    ``RNG`` is reseeded in place: the test modules import it by name.
    """
    seed = zlib.crc32(request.node.nodeid.encode())
    RNG.bit_generator.state = np.random.default_rng(seed).bit_generator.state


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


def _backward_constants(shape, channel, dtype):
    """Per-channel ``mean, a, b, c`` of the backward's elementwise pass, shaped to broadcast."""
    compute = np.float64 if dtype == "float64" else np.float32
    parameter_shape = [1] * len(shape)
    parameter_shape[channel] = shape[channel]
    return [
        RNG.normal(0.5, 1.0, parameter_shape).astype(compute) for _ in ("mean", "a", "b", "c")
    ]


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


def torch_fused_formula(x, mean, variance, scale, offset, channel):
    """What PyTorch's fast fused y must be, bit for bit, from the given ``[C]`` statistics:
    ``c = x − μ`` and ``f = rsqrt(σ² + ε)·γ`` rounded to float32 as the generic kernel
    rounds them, then ``c·f + β`` rounded once (a fused multiply-add: the product of two
    float32 values is exact in float64) where the channels are x's innermost axis in
    memory, twice (the generic kernel's multiply and add) elsewhere; then x's dtype."""
    import torch

    shape = [1] * x.ndim
    shape[channel] = -1
    centred = x.detach().to(torch.float32) - mean.view(shape)
    factor = (torch.reciprocal(torch.sqrt(variance + EPSILON)) * scale).view(shape)
    if x.stride(channel) == 1:
        y = (centred.double() * factor.double() + offset.view(shape).double()).to(torch.float32)
    else:
        y = centred * factor + offset.view(shape)
    return y.to(x.dtype)

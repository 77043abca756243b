"""The NumPy fast paths' peak memory (tracemalloc), and the whole pass of small wide inputs."""

from __future__ import annotations

import tracemalloc

import array_api_compat.numpy as NP  # the namespace the library hands its kernels
import numpy as np
import pytest

import bn_portable as bn
import fast_paths_cases
from fast_paths_cases import EPSILON, FLOAT_DTYPES, RNG, _data, numpy_kernels, numpy_plan

# The fixtures of fast_paths_cases this module uses (pytest finds them by these names).
_seed_per_test = fast_paths_cases._seed_per_test


@pytest.mark.parametrize(("shape", "channel"), [((8, 30, 30, 64), 3), ((8, 64, 30, 30), 1)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_numpy_weighted_training_peak_memory(shape, channel, dtype, monkeypatch):
    """tf-slim's weighted training step: at most 1.25x the input, output included
    (the generic kernel's centred and squared batch made it 2x, 6x for float16)."""
    monkeypatch.setattr(numpy_plan, "SMALLEST_HALF_INPUT", 0)
    x, _, _ = _data(shape, channel, dtype)
    weights = RNG.uniform(0.5, 1.5, shape[0]).astype(np.float32)
    options = {"scale": True, "data_format": "NHWC" if channel == 3 else "NCHW", "batch_weights": weights}
    _, state = bn.batch_norm(x, None, **options)
    with bn.fast_paths(True):
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            result = bn.batch_norm(x, state, **options)
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
    del result
    assert peak <= 1.25 * x.nbytes + 64 * 1024, peak / x.nbytes


@pytest.mark.parametrize(("shape", "channel"), [((8, 30, 30, 64), 3), ((8, 64, 30, 30), 1)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_numpy_training_peak_memory(shape, channel, dtype, monkeypatch):
    """Output included, the training kernel allocates at most 1.25× the input."""
    monkeypatch.setattr(numpy_plan, "SMALLEST_HALF_INPUT", 0)

    x, scale, offset = _data(shape, channel, dtype)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = numpy_kernels.fused_training_core(x, scale, offset, EPSILON, channel, xp=NP)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    del result
    assert peak <= 1.25 * x.nbytes + 64 * 1024, peak / x.nbytes


@pytest.mark.parametrize(("shape", "channel", "whole"), [((256, 512), 1, True), ((8, 30, 30, 64), 3, False)])
def test_numpy_inference_peak_memory(shape, channel, whole):
    """Inference and ``normalize`` allocate y and block-sized tiles at most; a small input in
    wide rows (``WHOLE_PASS_INPUT``) runs each pass whole, straight into y, and allocates y alone."""
    x, scale, offset = _data(shape, channel, "float32")
    assert numpy_plan.plan_for(x.shape, channel, 4, shared=True).whole_pass is whole
    mean, variance = RNG.normal(size=shape[channel]).astype(np.float32), np.ones(shape[channel], np.float32)
    calls = {
        "fused_inference": lambda: numpy_kernels.fused_inference(x, scale, offset, mean, variance, EPSILON, channel, xp=NP),
        "normalize": lambda: numpy_kernels.normalize(x, mean, variance, offset, scale, EPSILON, xp=NP),
    }
    for name, call in calls.items():
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            result = call()
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        assert result is not NotImplemented
        del result
        # A whole pass: y, and the buffer of at most 8192 values NumPy's iterator takes
        # for a broadcast operand (the blocked passes' tiles here would add 63 KB).
        limit = x.nbytes + 48 * 1024 if whole else 1.25 * x.nbytes + 64 * 1024
        assert peak <= limit, (name, peak / x.nbytes)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_moments_whole_pass(monkeypatch, dtype):
    """A small input in wide rows (``WHOLE_PASS_INPUT``) centres and squares every row at once,
    into one temporary of the input's size, and sums the same blocks: the blocked pass's bits."""
    x = RNG.normal(3.0, 1.0, (256, 512)).astype(dtype)
    assert numpy_plan.plan_for(x.shape, 1, x.dtype.itemsize, shared=True).whole_pass
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        whole = numpy_kernels.local_moments(x, (0,), xp=NP)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # The temporary and the sums' two block buffers (1.17-1.19x on NumPy 2, 1.27x on 1.x,
    # whose broadcasting iterator buffers): the kernels' bound, 1.25x plus 64 KB.
    assert peak <= 1.25 * x.nbytes + 64 * 1024, peak / x.nbytes
    monkeypatch.setattr(numpy_plan, "WHOLE_PASS_INPUT", 0)
    blocked = numpy_kernels.local_moments(x, (0,), xp=NP)
    for value, expected in zip(whole, blocked, strict=True):
        np.testing.assert_array_equal(value, expected)

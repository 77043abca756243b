"""The PyTorch fast paths of the backward (gradient sums and input) against the generic kernels.

The tolerances are those of ``fast_paths_cases``.
"""

from __future__ import annotations

import numpy as np
import pytest

import fast_paths_cases
from bn_portable._kernels import _backward
from fast_paths_cases import (
    LAYOUTS,
    RNG,
    SUM_ULPS,
    _axes,
    _backward_constants,
    _np,
    _small_torch_blocks,
    _to_torch,
    _torch_xp,
)

# The fixtures of fast_paths_cases this module uses (pytest finds them by these names).
_seed_per_test = fast_paths_cases._seed_per_test
torch_fast = fast_paths_cases.torch_fast


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("is_training", [True, False])
def test_torch_gradient_input_is_bit_identical(
    torch_fast, monkeypatch, shape, channel, dtype, weighted, is_training
):
    _small_torch_blocks(monkeypatch, torch_fast, 64)  # several blocks on small inputs
    xp = _torch_xp()
    compute = "float64" if dtype == "float64" else "float32"
    x = _to_torch(RNG.normal(1.0, 2.0, shape), dtype)
    dy = _to_torch(RNG.normal(0.0, 1.0, shape), dtype)
    mean, a, b, c = (
        _to_torch(v, compute) for v in _backward_constants(shape, channel, compute)
    )
    share = None
    if weighted and is_training:
        share = _to_torch(RNG.uniform(0.0, 0.1, (shape[0],) + (1,) * (len(shape) - 1)), compute)
    if not is_training:
        b = c = None
    fast = torch_fast.gradient_input(dy, x, mean, a, b, c, share, xp=xp)
    assert fast is not NotImplemented
    generic = _backward.gradient_input.generic(dy, x, mean, a, b, c, share, xp=xp)
    assert fast.dtype == generic.dtype == x.dtype
    assert fast.shape == generic.shape
    import torch

    assert torch.equal(fast, generic)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("shape", "channel"), LAYOUTS)
def test_torch_gradient_sums_are_accurate(torch_fast, monkeypatch, shape, channel, dtype):
    _small_torch_blocks(monkeypatch, torch_fast, 64)
    import torch

    xp = _torch_xp()
    x = _to_torch(RNG.normal(1.5, 2.0, shape), dtype)
    dy = _to_torch(RNG.normal(0.3, 1.0, shape), dtype)
    mean = torch.from_numpy(RNG.normal(1.5, 0.1, shape[channel]).astype(np.float32))
    fast = torch_fast.gradient_sums(dy, x, mean, channel, xp=xp)
    assert fast is not NotImplemented
    generic = _backward.gradient_sums.generic(dy, x, mean, channel, xp=xp)
    axes = _axes(len(shape), channel)
    shape_b = [1] * len(shape)
    shape_b[channel] = -1
    dy64, x64 = _np(dy).astype(np.float64), _np(x).astype(np.float64)
    products = dy64 * (x64 - _np(mean).astype(np.float64).reshape(shape_b))
    eps = float(np.finfo(np.float32).eps)
    for f, g, terms in zip(fast, generic, (dy64, products)):
        assert f.dtype == g.dtype == torch.float32 and f.shape == g.shape == (shape[channel],)
        exact, magnitude = terms.sum(axis=axes), np.abs(terms).sum(axis=axes)
        assert np.all(np.abs(_np(f) - exact) <= SUM_ULPS * eps * magnitude)


def test_torch_backward_leaves_autograd_to_the_generic_kernels(torch_fast):
    xp = _torch_xp()
    x = _to_torch(RNG.normal(size=(4, 3, 5, 6)), "float32").requires_grad_(True)
    dy = _to_torch(RNG.normal(size=(4, 3, 5, 6)), "float32")
    mean, a, b, c = (_to_torch(v, "float32") for v in _backward_constants(x.shape, 1, "float32"))
    assert torch_fast.gradient_input(dy, x, mean, a, b, c, None, xp=xp) is NotImplemented
    assert torch_fast.gradient_sums(dy, x, mean.reshape(-1), 1, xp=xp) is NotImplemented

"""PyTorch's ``local_moments`` (the statistics of the non-fused paths and ``moments``) against
the generic kernel and extended-precision sums: batches of at least 2^16 values, every dense
layout, float32, float64, half widened to float32 and half in its own dtype.
"""

from __future__ import annotations

import numpy as np
import pytest

import fast_paths_cases
from fast_paths_cases import _small_torch_blocks, _to_torch, _torch_xp

# The fixtures of fast_paths_cases this module uses (pytest finds them by these names).
_seed_per_test = fast_paths_cases._seed_per_test
torch_fast = fast_paths_cases.torch_fast

# NCHW, NHWC and [N, C].
TORCH_MOMENT_LAYOUTS = [((16, 32, 12, 12), 1), ((16, 12, 12, 32), 3), ((4096, 24), 1)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("shape", "channel"), TORCH_MOMENT_LAYOUTS)
def test_torch_local_moments_are_accurate(torch_fast, shape, channel, dtype):
    """Mean and m2 within a few ulps of float64, |mean|/σ = 1e4 included, and of the generic kernel's."""
    from bn_portable._kernels import _moments

    xp = _torch_xp()
    axes = tuple(axis for axis in range(len(shape)) if axis != channel)
    for loc in (0.5, 1e4):
        x = np.random.default_rng(11).normal(loc, 1.0, shape)
        tensor = _to_torch(x, "float32").to(getattr(__import__("torch"), dtype))
        # The reference in extended precision (float64 data included, where NumPy's own
        # float64 sums would be a few epsilons off themselves).
        x64 = tensor.double().numpy().astype(np.longdouble)
        mean, m2 = torch_fast.local_moments(tensor, axes, xp=xp)
        generic_mean, generic_m2 = _moments.local_moments.generic(tensor, axes, xp=xp)
        mean64 = x64.mean(axis=axes, keepdims=True)
        m2_64 = ((x64 - mean64) ** 2).sum(axis=axes, keepdims=True)
        eps = float(np.finfo(dtype).eps)
        assert tuple(mean.shape) == tuple(generic_mean.shape) == mean64.shape
        assert np.all(np.abs(mean.double().numpy() - mean64) <= 2 * eps * np.abs(mean64) + 2 * eps)
        # m2 inherits the mean's rounding, squared: eps·|mean|/σ relative, as any two-pass variance.
        bound = 4 * eps * m2_64 * (1 + loc)
        assert np.all(np.abs(m2.double().numpy() - m2_64) <= bound)
        assert np.all(np.abs(generic_m2.double().numpy() - m2_64) <= bound)


def test_torch_local_moments_differentiate_as_the_generic_kernel(torch_fast):
    torch = pytest.importorskip("torch")
    from bn_portable._kernels import _moments

    xp = _torch_xp()
    x = torch.randn(16, 32, 12, 12, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 32, 1, 1, dtype=torch.float64)
    grads = []
    for kernel in (torch_fast.local_moments, _moments.local_moments.generic):
        mean, m2 = kernel(x, (0, 2, 3), xp=xp)
        (gradient,) = torch.autograd.grad(((mean + m2) * weights).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad((gradient * gradient).sum(), x)
        grads.append((gradient.detach(), second))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10, atol=1e-10)


def test_torch_local_moments_decline_what_they_do_not_cover(torch_fast):
    torch = pytest.importorskip("torch")
    xp = _torch_xp()
    big = torch.randn(16, 32, 12, 12)
    assert torch_fast.local_moments(big[:2], (0, 2, 3), xp=xp) is NotImplemented  # small
    assert torch_fast.local_moments(big, (0, 1, 3), xp=xp) is NotImplemented  # channel on axis 2
    assert torch_fast.local_moments(big, (0, 2), xp=xp) is NotImplemented  # two kept axes
    strided = big[:, :, ::2]  # neither layout dense: the generic kernel
    assert torch_fast.local_moments(strided, (0, 2, 3), xp=xp) is NotImplemented
    # A half batch only widened to float32; float32 not narrowed.
    assert torch_fast.local_moments(big.half(), (0, 2, 3), xp=xp, compute=torch.float64) is NotImplemented
    assert torch_fast.local_moments(big, (0, 2, 3), xp=xp, compute=torch.float16) is NotImplemented


@pytest.mark.parametrize("block_elements", [None, 4096], ids=["whole", "blocks"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NCHW-channels-last", "rows"])
def test_torch_local_moments_blocked_and_widened(torch_fast, monkeypatch, layout, dtype, block_elements):
    """Every dense layout, half input widened (compute=float32), whole or in cache-sized
    blocks: within a few ulps of the extended-precision moments of the widened values."""
    torch = pytest.importorskip("torch")
    _small_torch_blocks(monkeypatch, torch_fast, block_elements)
    xp = _torch_xp()
    shape, channel = {"NHWC": ((16, 12, 12, 32), 3), "rows": ((4096, 24), 1)}.get(layout, ((16, 32, 12, 12), 1))
    axes = tuple(axis for axis in range(len(shape)) if axis != channel)
    for loc in (0.5, 1e3):
        values = np.random.default_rng(5).normal(loc, 1.0, shape)
        tensor = torch.from_numpy(values).to(getattr(torch, dtype))
        if layout == "NCHW-channels-last":
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        compute = None if dtype == "float32" else torch.float32
        mean, m2 = torch_fast.local_moments(tensor, axes, xp=xp, compute=compute)
        assert mean.dtype == m2.dtype == torch.float32
        x64 = tensor.double().numpy().astype(np.longdouble)  # the values as given, exactly
        mean64 = x64.mean(axis=axes, keepdims=True)
        m2_64 = ((x64 - mean64) ** 2).sum(axis=axes, keepdims=True)
        eps = float(np.finfo(np.float32).eps)
        assert np.all(np.abs(mean.double().numpy() - mean64) <= 2 * eps * np.abs(mean64) + 2 * eps)
        assert np.all(np.abs(m2.double().numpy() - m2_64) <= 4 * eps * m2_64 * (1 + loc))


@pytest.mark.parametrize("block_elements", [None, 4096], ids=["whole", "blocks"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NCHW-channels-last", "rows"])
def test_torch_local_moments_in_half_precision(torch_fast, monkeypatch, layout, dtype, block_elements):
    """Half moments in their own dtype (TensorFlow's for bfloat16): the mean is the exact mean
    rounded once, m2 the exact sum of the half-rounded squares of the half-rounded
    differences from it, rounded once (within one ulp: sums accumulated in float32), whole
    or block by block, where the generic kernel's sums are no closer."""
    torch = pytest.importorskip("torch")
    from bn_portable._kernels import _moments

    _small_torch_blocks(monkeypatch, torch_fast, block_elements)
    xp = _torch_xp()
    half = getattr(torch, dtype)
    shape, channel = {"NHWC": ((16, 12, 12, 32), 3), "rows": ((4096, 24), 1)}.get(layout, ((16, 32, 12, 12), 1))
    axes = tuple(axis for axis in range(len(shape)) if axis != channel)
    ulp = 2.0 ** (-7 if dtype == "bfloat16" else -10)  # relative spacing at 1: one ulp at most
    for loc in (0.5, 6.0):
        tensor = torch.from_numpy(np.random.default_rng(7).normal(loc, 1.0, shape)).to(half)
        if layout == "NCHW-channels-last":
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        results = {"fast": torch_fast.local_moments(tensor, axes, xp=xp)}
        results["generic"] = _moments.local_moments.generic(tensor, axes, xp=xp)
        errors = {}
        for name, (mean, m2) in results.items():
            assert mean.dtype == m2.dtype == half
            x64 = tensor.double().numpy().astype(np.longdouble)
            mean64 = x64.mean(axis=axes, keepdims=True)
            assert np.all(np.abs(mean.double().numpy() - mean64) <= ulp * np.abs(mean64))
            squares = (tensor - mean).square()  # each rounded to the half dtype, as TensorFlow's
            exact = squares.double().numpy().astype(np.longdouble).sum(axis=axes, keepdims=True)
            errors[name] = np.abs(m2.double().numpy() - exact) / exact
            assert np.all(errors[name] <= ulp)
        assert errors["fast"].max() <= errors["generic"].max() + ulp / 2

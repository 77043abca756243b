"""PyTorch's weighted moments for one weight per example (``_native._torch_weighted``).

Held to what the generic kernel computes (the same per-example sums and the
same weighting, so within a couple of ulps, and on this CPU the same bits), to
extended-precision weighted moments on ill-conditioned batches, in blocks of
one and of several examples, and to the calls it must hand back. The kernel
takes batches of more than one block, so the tests shrink the blocks.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import array_api_compat.torch as xp  # noqa: E402  (the namespace the library hands its kernels)

import bn_portable as bn  # noqa: E402
from bn_portable._kernels import _moments  # noqa: E402
from bn_portable._native import _torch, _torch_blocks  # noqa: E402

SHAPE = (16, 32, 12, 12)  # 73 728 values: one block unless the blocks shrink
LAYOUTS = ["NCHW", "NHWC", "NCHW-channels-last"]
#: Blocks of one example (4608 values) and of four.
BLOCK_SIZES = [1000, 20000]


@pytest.fixture(params=BLOCK_SIZES, ids=["one-example-blocks", "four-example-blocks"])
def small_blocks(request, monkeypatch):
    monkeypatch.setattr(_torch_blocks, "BLOCK_ELEMENTS", request.param)


def _batch(layout: str, dtype: str, loc: float, seed: int = 3) -> tuple[torch.Tensor, int]:
    values = torch.from_numpy(np.random.default_rng(seed).normal(loc, 1.0, SHAPE))
    x = values.to(getattr(torch, dtype))
    if layout == "NHWC":
        return x.permute(0, 2, 3, 1).contiguous(), 3
    if layout == "NCHW-channels-last":
        return x.contiguous(memory_format=torch.channels_last), 1
    return x, 1


def _weights(x: torch.Tensor, zeros: bool) -> torch.Tensor:
    weights = torch.from_numpy(np.random.default_rng(4).uniform(0.25, 2.0, x.shape[0])).float()
    if zeros:
        weights[::3] = 0.0
    return weights.reshape((-1,) + (1,) * (x.ndim - 1))


def _axes(x: torch.Tensor, channel: int) -> tuple[int, ...]:
    return tuple(axis for axis in range(x.ndim) if axis != channel)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("zeros", [False, True], ids=["weights", "with-zeros"])
def test_torch_weighted_moments_match_the_generic_kernel(small_blocks, layout, dtype, zeros):
    x, channel = _batch(layout, dtype, loc=3.0)
    weights = _weights(x, zeros)
    compute = torch.float32 if dtype == "float16" else None
    fast = _torch.weighted_local_moments(x, _axes(x, channel), weights, "zero", xp=xp, compute=compute)
    assert fast is not NotImplemented
    wide = x.to(compute or x.dtype)
    generic = _moments.weighted_local_moments.generic(wide, _axes(x, channel), weights, "zero", xp=xp)
    eps = float(torch.finfo(wide.dtype).eps)
    for ours, theirs in zip(fast, generic):
        assert ours.dtype == theirs.dtype == wide.dtype
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=2 * eps, atol=0.0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_weighted_moments_are_accurate_on_ill_conditioned_batches(small_blocks, layout, dtype):
    """|mean|/σ = 1e3 (float16's values, widened) and 1e4 (float32): the mean within a few
    ulps of the extended-precision weighted mean, m2 of the exact sum around that rounded mean."""
    x, channel = _batch(layout, dtype, loc=1e3 if dtype == "float16" else 1e4)
    weights = _weights(x, zeros=True)
    axes = _axes(x, channel)
    compute = torch.float32 if dtype == "float16" else None
    count, mean, m2 = _torch.weighted_local_moments(x, axes, weights, "zero", xp=xp, compute=compute)
    values = x.double().numpy().astype(np.longdouble)  # the values as given, exactly
    w = np.broadcast_to(weights.double().numpy().astype(np.longdouble), values.shape)
    exact_count = w.sum(axis=axes, keepdims=True)
    exact_mean = (w * values).sum(axis=axes, keepdims=True) / exact_count
    magnitude = (w * np.abs(values)).sum(axis=axes, keepdims=True) / exact_count
    eps = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(count.double().numpy(), exact_count.astype(np.float64), rtol=2 * eps)
    assert np.all(np.abs(mean.double().numpy() - exact_mean) <= 4 * eps * magnitude)
    around_rounded = (w * (values - mean.double().numpy()) ** 2).sum(axis=axes, keepdims=True)
    assert np.all(np.abs(m2.double().numpy() - around_rounded) <= 8 * eps * around_rounded)


def test_torch_weighted_layer_steps_equal_the_generic_ones(small_blocks):
    """tf-slim's weighted training step (float32, float16 with float16 variables) with the
    fast paths on and off: the same y and the same state."""
    for dtype in ("float32", "float16"):
        x, _ = _batch("NHWC", dtype, loc=2.0)
        weights = _weights(x, zeros=True).reshape(-1)
        outputs = []
        for on in (True, False):
            with bn.fast_paths(on):
                outputs.append(bn.batch_norm(x, None, batch_weights=weights, scale=True, data_format="NHWC"))
        (y_on, state_on), (y_off, state_off) = outputs
        torch.testing.assert_close(y_on, y_off, rtol=0.0, atol=0.0)
        for ours, theirs in zip(state_on, state_off):
            if ours is not None:
                torch.testing.assert_close(ours, theirs, rtol=0.0, atol=0.0)


def test_torch_weighted_moments_decline_what_they_do_not_cover(monkeypatch):
    x, _ = _batch("NCHW", "float32", loc=0.0)
    per_example = _weights(x, zeros=False)
    axes = (0, 2, 3)

    def declines(values, weights, axes=axes, empty="zero", compute=None):
        result = _torch.weighted_local_moments(values, axes, weights, empty, xp=xp, compute=compute)
        return result is NotImplemented

    assert declines(x, per_example)  # one block: the generic kernel, fewer operations
    monkeypatch.setattr(_torch_blocks, "BLOCK_ELEMENTS", 1000)
    assert not declines(x, per_example)  # several blocks: taken
    assert declines(x, torch.rand(16, 1, 12, 12))  # a mask over NCHW pixels
    assert declines(x, torch.rand(1, 32, 1, 1))  # per-channel weights
    assert declines(x, per_example, empty="nan")
    assert declines(x, per_example, axes=(0, 2))  # two kept axes
    assert declines(x[:, :, ::2], per_example)  # neither layout dense
    assert declines(x.half(), per_example)  # half input without compute=float32
    assert declines(x.to(torch.bfloat16), per_example, compute=torch.bfloat16)
    assert declines(x.requires_grad_(), per_example)  # autograd records: generic ops

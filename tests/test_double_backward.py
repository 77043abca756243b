"""Second-order gradients of half-precision input through the PyTorch fast path are float32 arithmetic.

docs/gradients.md: half-precision gradient arithmetic is float32. Autograd
differentiates the fast path's backward op by op; run in float16 it gave
second-order gradients about 1.1 float16 epsilons (norm-wise) off the float64
truth, five times the float32-arithmetic figure of the generic path.
"""

from __future__ import annotations

import numpy as np
import pytest

import bn_portable as bn

torch = pytest.importorskip("torch")
from bn_portable._native import _torch_fused as torch_fast  # noqa: E402  (needs torch)

#: Norm-wise relative error allowed, in epsilons of the dtype (float32 arithmetic
#: gives about 0.2; float16 arithmetic gave 1.1 on these shapes).
ALLOWED_EPSILONS = 0.5


def _second_order(x, dy, v, dtype, fast):
    """``(g, H·v)``: the gradient of ``Σ dy·y`` in x and its derivative along ``v``."""
    x = torch.tensor(x, dtype=dtype, requires_grad=True)
    dy, v = torch.tensor(dy, dtype=dtype), torch.tensor(v, dtype=dtype)
    with bn.fast_paths(fast):
        y, _ = bn.batch_norm(x, fused=True, scale=True)
        (g,) = torch.autograd.grad((y * dy).sum(), x, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), x)
    return g.detach().double().numpy(), hv.double().numpy()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(8, 4, 4, 6), (16, 5, 5, 3)])
def test_double_backward_of_half_input_is_float32_arithmetic(monkeypatch, dtype, shape):
    rng = np.random.default_rng(3)
    torch_dtype = getattr(torch, dtype)
    # Inputs exactly representable in the half dtype, so the float64 reference sees the same data.
    x, dy, v = (
        torch.tensor(rng.normal(size=shape)).to(torch_dtype).double().numpy() for _ in range(3)
    )
    calls = []
    original = torch_fast._NormalizeWithBatchStatistics.apply
    monkeypatch.setattr(
        torch_fast._NormalizeWithBatchStatistics,
        "apply",
        lambda *args: calls.append(1) or original(*args),
    )
    g, hv = _second_order(x, dy, v, torch_dtype, fast=True)
    assert calls, "the fast path's autograd node did not run"
    g64, hv64 = _second_order(x, dy, v, torch.float64, fast=False)
    eps = float(torch.finfo(torch_dtype).eps)
    first = np.linalg.norm(g - g64) / np.linalg.norm(g64) / eps
    second = np.linalg.norm(hv - hv64) / np.linalg.norm(hv64) / eps
    assert first < ALLOWED_EPSILONS, first
    assert second < ALLOWED_EPSILONS, second

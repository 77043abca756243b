"""PyTorch's backward kernels: the generic backward's passes, block by block.

``gradient_sums`` and ``gradient_input`` (the backward) work block by block
along the batch with block-sized temporaries, where the generic expressions
keep input-sized ones alive (on CPU, fresh memory for each temporary costs as
much as the arithmetic). The elementwise pass is bit-identical (same
operations, same order, written into the output); the product sum adds the
same terms in another order (float64 totals of block sums).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._lib import _layout
from .._lib._typing import Namespace
from ._torch_blocks import needs_autograd, outer_blocks


def gradient_sums(dy: Tensor, x: Tensor, mean: Tensor, channel: int, *, xp: Namespace) -> Any:
    """``(Σ dy, Σ dy·(x − mean))`` per channel, the product summed block by block.

    ``Σ dy`` is the generic ``torch.sum``. The products are formed and summed
    one block of the batch at a time (block-sized temporaries instead of an
    input-sized one), and the block sums added in float64 and rounded once:
    the same terms, added in another order, at least as accurately.
    """
    if torch._C._are_functorch_transforms_active() or needs_autograd([dy, x, mean]):
        return NotImplemented
    axes = _layout.reduction_axes(x.ndim, channel)
    compute = mean.dtype
    mean_b = _layout.per_channel(mean, x.ndim, channel, xp)
    partials = [
        torch.sum(torch.sub(x[rows].to(compute), mean_b).mul_(dy[rows].to(compute)), axes)
        for rows in outer_blocks(x)
    ]
    sum_dy_centred = torch.stack(partials).double().sum(0).to(compute)
    return torch.sum(dy.to(compute), axes), sum_dy_centred


def gradient_input(
    dy: Tensor, x: Tensor, mean: Tensor | None, a: Tensor, b: Tensor | None, c: Tensor | None,
    share: Tensor | None, *, xp: Namespace,
) -> Any:
    """The generic ``dy·a + ((x − mean)·b + c)``, block by block into one output (bit-identical).

    The generic expression keeps two input-sized temporaries alive at once;
    on CPU, fresh memory for each (page faults, handed back on free) costs
    more than the arithmetic. Here the output is the only large allocation:
    blocks of the batch go through the same operations in the same order,
    with block-sized scratch.
    """
    tensors = [t for t in (dy, x, mean, a, b, c, share) if t is not None]
    if torch._C._are_functorch_transforms_active() or needs_autograd(tensors):
        return NotImplemented  # out= and in-place ops: let autograd see the generic graph
    if x.ndim == 0:
        return NotImplemented
    compute = a.dtype
    dx = torch.empty_like(x)  # x's memory layout (channels-last stays channels-last)
    wide = dx.dtype == compute
    for rows in outer_blocks(x):
        out = dx[rows]
        product = torch.mul(dy[rows].to(compute), a, out=out if wide else None)
        if b is not None and c is not None and mean is not None:  # training: all three
            correction = torch.sub(x[rows].to(compute), mean).mul_(b).add_(c)
            if share is not None:
                correction.mul_(share[rows] if share.shape[0] > 1 else share)
            product.add_(correction)
        if not wide:
            out.copy_(product)  # one rounding to x's dtype
    return dx


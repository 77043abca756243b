"""PyTorch's backward kernels.

``batch_norm_backward`` is PyTorch's own ``native_batch_norm_backward`` with given
batch statistics (NHWC as channels-last views): the fused kernel's autograd node and
the non-fused layer's one-node training step (``_torch_step``) both call it.

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


def batch_norm_backward(
    dy: Tensor, x: Tensor, scale: Tensor | None, mean: Tensor, inverse_std: Tensor, channel: int,
    epsilon: float, mask: list[bool],
) -> tuple[Any, Any, Any]:
    """``(dx, dscale, doffset)`` of batch norm with batch statistics: PyTorch's own
    ``native_batch_norm_backward`` (NHWC as channels-last views), ``mask`` saying which.

    Under create_graph (grad mode on here), autograd differentiates this
    backward op by op in its inputs' dtype: half inputs would make the
    second-order gradient half-precision arithmetic. In float32 it is float32
    arithmetic, and only dx is rounded to x's dtype. First-order gradients keep
    the half kernel (float32 inside, the same result).
    """
    widen = torch.is_grad_enabled() and x.dtype not in (torch.float32, torch.float64)
    dx, dscale, doffset = torch.ops.aten.native_batch_norm_backward(
        _channels_second(dy.float() if widen else dy, channel),
        _channels_second(x.float() if widen else x, channel),
        scale, None, None, mean, inverse_std, True, epsilon, mask,
    )
    if dx is not None:
        dx = _channels_back(dx.to(x.dtype) if widen else dx, channel)
    return dx, dscale, doffset


def _channels_second(x: Tensor, channel: int) -> Any:
    """NHWC/NDHWC as PyTorch's channels-last NCHW/NCDHW: a view, no copy."""
    return x if channel == 1 else x.movedim(channel, 1)


def _channels_back(y: Tensor, channel: int) -> Any:
    return y if channel == 1 else y.movedim(1, channel)

"""PyTorch's two-pass sums over a channel-grouped view, and ``local_moments`` from them.

``torch.sum(x, (0, 2, 3))`` of an NCHW batch reduces around the channel axis
with strided loops, several times slower on CPU than summing the same values
viewed as ``(N, C, H·W)`` over ``(0, 2)``: at 32×64×56×56 float32 on 2 cores,
``moments`` took 17.3 ms generic and 3.0 ms this way. ``grouped`` gives that
view (NHWC, and NCHW in channels-last memory, as ``(N·H·W, C)`` over rows),
without a copy.

``two_pass_sums`` is the one place both torch kernels take their statistics
(``local_moments`` here, the fused training kernel's in ``_torch_fused``): the sum,
the mean from it (each caller's rounding), then the sum of squared deviations
from that rounded mean, each a ``torch.sum`` (cascade summation). A large batch
on CPU goes through cache-sized blocks of its first axis, half input widened
block by block, the block sums added in float64 and rounded once: no
temporary as large as the input (on CPU fresh memory for one costs as much as
the arithmetic), the same terms added in another order, at least as
accurately. Only the order of the additions differs from the generic kernel,
so the results are within the accuracy contract.

``local_moments`` takes float32 and float64 batches, and half ones widened to
float32 (``compute``) or in their own dtype (TensorFlow's moments of bfloat16 are
bfloat16: each difference and square rounded to it, the sums accumulated in
float32 and rounded once, as ``torch.sum`` of a whole half tensor accumulates),
of at least ``SMALLEST_INPUT`` values, eagerly. Where
autograd records, it runs the two passes unblocked as plain differentiable
calls (double backward included). Everything else (smaller batches, other
layouts, ``torch.compile``, whose float32 sums the generic kernel widens)
returns ``NotImplemented``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._lib._backends import operand
from .._lib._typing import Namespace
from . import _torch_blocks

#: Smaller batches take the generic kernel: its sums are as quick there, and the
#: synchronized statistics (always generic) are then the same bits.
SMALLEST_INPUT = 1 << 16

_DTYPES = (torch.float32, torch.float64)
_HALF = (torch.float16, torch.bfloat16)


def local_moments(x: Tensor, axes: tuple[int, ...], *, xp: Namespace, compute: Any = None) -> Any:
    """``(sum / n, Σ(x − mean)²)`` keepdims, over every axis but the channel's."""
    kept = [axis for axis in range(x.ndim) if axis not in axes]
    dtype = x.dtype if compute is None else compute
    if (
        len(kept) != 1
        or not _served(x.dtype, dtype)
        or x.numel() < SMALLEST_INPUT
        or torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
    ):
        return NotImplemented
    channel = kept[0]
    view = grouped(x, channel)
    if view is None:
        return NotImplemented
    count = x.numel() // x.shape[channel]
    keepdims = tuple(x.shape[channel] if axis == channel else 1 for axis in range(x.ndim))
    if torch.is_grad_enabled() and x.requires_grad:
        if x.dtype != dtype:
            return NotImplemented
        mean, m2 = _differentiable_sums(view, count)
    else:
        mean, m2 = divided_sums(view, dtype, count)
    return mean.reshape(keepdims), m2.reshape(keepdims)


def divided_sums(view: Grouped, dtype: torch.dtype, count: int) -> tuple[Tensor, Tensor]:
    """``[C]`` mean and m2 in ``dtype`` by ``two_pass_sums``, the mean the total divided by the
    count (as the generic moments kernel divides: by the remembered 0-d operand). Eagerly:
    its callers have asked the compiler."""
    mean, m2, _ = two_pass_sums(
        view, dtype, lambda total: total.div_(operand(count, total, eager=True)), compiling=False
    )
    return mean, m2


def _served(x_dtype: torch.dtype, dtype: torch.dtype) -> bool:
    """float32 and float64 in themselves; half precision widened to float32, or in itself
    (TensorFlow takes bfloat16's moments in bfloat16)."""
    if x_dtype == dtype:
        return dtype in _DTYPES or dtype in _HALF
    return x_dtype in _HALF and dtype == torch.float32


class Grouped:
    """x viewed with the channel on one axis: ``values`` summed over ``dims``;
    ``broadcast`` makes a ``[C]`` vector broadcast against it; ``centred`` subtracts one."""

    def __init__(self, x: Tensor, values: Tensor, dims: tuple[int, ...], moved: bool) -> None:
        self.x, self.values, self.dims = x, values, dims
        self._moved = moved

    def broadcast(self, vector: Tensor) -> Tensor:
        """A ``[C]`` vector against ``values``: as it is against rows of C (a view is a call too)."""
        return vector if self.dims == (0,) else vector.view(1, -1, 1)

    def centred(self, values: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
        """``values − mean``, and the same memory as a tensor of x's shape and layout of its
        own (not a view: the fused kernel's autograd node writes y into it in place)."""
        if self.values is self.x:  # x is its own view (an MLP's [N, C]): the difference is both
            difference = torch.sub(values, self.broadcast(mean))
            return difference, difference
        kept, regrouped = self.empty(values.dtype)
        return torch.sub(values, self.broadcast(mean), out=regrouped), kept

    def empty(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """A new tensor of x's shape and layout, and the same memory viewed as ``values``."""
        kept = torch.empty_like(self.x, dtype=dtype)
        return kept, (kept.movedim(1, -1) if self._moved else kept).reshape(self.values.shape)


def grouped(x: Tensor, channel: int) -> Grouped | None:
    """NCHW as ``(N, C, H·W)`` over ``(0, 2)``; channels last in memory as ``(rows, C)`` over
    rows (a one-axis reduction is quicker there). A view, or None where x is laid out otherwise."""
    if x.ndim < 2 or channel not in (1, x.ndim - 1):
        return None
    channels = x.shape[channel]
    if channel == 1 and x.ndim > 2 and x.is_contiguous():
        return Grouped(x, x.reshape(x.shape[0], channels, -1), (0, 2), False)
    moved = channel != x.ndim - 1
    last = x.movedim(1, -1) if moved else x  # NCHW in channels-last memory
    if last.is_contiguous():
        rows = last if last.ndim == 2 else last.reshape(-1, channels)
        return Grouped(x, rows, (0,), moved)
    return None


class Sums(NamedTuple):
    """``two_pass_sums``' result; ``centred`` (x − mean, in x's shape and layout) where asked for."""

    mean: Tensor
    m2: Tensor
    centred: Tensor | None = None


def two_pass_sums(
    view: Grouped, dtype: torch.dtype, mean_of: Callable[[Tensor], Tensor], *, compiling: bool,
    keep_centred: bool = False,
) -> Sums:
    """``[C]`` mean (``mean_of`` the total, a new tensor it may change in place) and sum of
    squared deviations from it (a new tensor too), in ``dtype``.

    Called without autograd recording; under ``torch.compile`` (``compiling``, as the
    caller asked it) both sums are taken in float64 and rounded once (the compiler's
    float32 sums were several ε off, and with |mean| = 10⁴σ the variance 200–500 ε,
    worse than TensorFlow's).
    With ``keep_centred``, the batch's centred values (``x − mean`` in ``dtype``, x's
    shape and layout) come back too: TensorFlow's fused formula subtracts the same mean
    from the same values, so the fused kernel's y starts from them, one pass fewer (a
    batch in blocks writes each block's differences there, its squares a block-sized
    temporary).
    """
    values, dims = view.values, view.dims
    if compiling or _one_block(values):  # the whole batch at once: no block bookkeeping
        if values.dtype != dtype:  # (a same-dtype .to is a call too, on a small batch)
            values = values.to(dtype)  # a half batch is widened exactly
        sum_of = _wide_sum if compiling else torch.sum  # chosen once, not by a helper per sum
        mean = mean_of(sum_of(values, dims))
        if keep_centred:  # squared into a new tensor (square_'s products), given back in x's layout
            centred, kept = view.centred(values, mean)
            return Sums(mean, sum_of(centred * centred, dims), kept)
        centred = torch.sub(values, view.broadcast(mean))
        return Sums(mean, sum_of(centred.square_(), dims))
    rows = _torch_blocks.outer_blocks(values)
    if values.dtype == dtype:
        total = torch.sum(values, dims)
    else:  # widened block by block: quicker than torch.sum(..., dtype=float32)
        total = _total([torch.sum(values[r].to(dtype), dims) for r in rows], dtype)
    mean = mean_of(total)
    mean_b = view.broadcast(mean)
    # torch.sub widens a half block exactly (type promotion to the mean's dtype); a half
    # block's squares (half moments) are summed in float32, as torch.sum of a whole one is.
    partial = torch.float32 if dtype in _HALF else dtype
    if not keep_centred:
        m2 = _total([torch.sum(torch.sub(values[r], mean_b).square_(), dims, dtype=partial) for r in rows], dtype)
        return Sums(mean, m2)
    kept, regrouped = view.empty(dtype)
    partials = []
    for r in rows:  # each block's differences written where they are kept, squared while in cache
        difference = torch.sub(values[r], mean_b, out=regrouped[r])
        partials.append(torch.sum(difference * difference, dims, dtype=partial))
    return Sums(mean, _total(partials, dtype), kept)


def _wide_sum(values: Tensor, dims: tuple[int, ...]) -> Tensor:
    """The sum of the values taken in float64 and rounded once to their dtype (for the
    compiler, see ``two_pass_sums``)."""
    return torch.sum(values, dims, dtype=torch.float64).to(values.dtype)


def _differentiable_sums(view: Grouped, count: int) -> tuple[Tensor, Tensor]:
    """The two passes as plain differentiable calls, for autograd to record."""
    mean = torch.sum(view.values, view.dims) / count
    centred = view.values - view.broadcast(mean)
    return mean, torch.sum(centred * centred, view.dims)


def _total(partials: list[Tensor], dtype: torch.dtype) -> Tensor:
    """The sum of per-block sums, added in float64 and rounded once to ``dtype``."""
    if len(partials) == 1:
        return partials[0].to(dtype)
    return torch.stack(partials).double().sum(0).to(dtype)


def _one_block(x: Tensor) -> Any:
    """Whether x is taken whole eagerly (the compiler takes every batch whole, as it plans
    the memory): small, or on a GPU (kernel launches cost more than temporaries there)."""
    return x.numel() <= _torch_blocks.BLOCK_ELEMENTS or not x.is_cpu

"""PyTorch's weighted moments for one frequency weight per example, block by block.

tf-slim's ``batch_weights`` (and ``weighted_moments`` with a weight per example)
weigh all of an example's values alike. The generic kernel
(``_kernels._moments``) sums each example's values per channel first and then
weighs those sums, but over whole tensors: a half batch widened to float32 in
one copy, then the centred batch and its squares, each a fresh input-sized
temporary (on CPU, fresh memory costs as much as the arithmetic). Here the same
per-example sums are taken block by block of examples (``_torch_blocks``), half
input widened one block at a time, so no temporary is larger than a block; the
weighting, the total weight and the division are the generic kernel's
operations, on the ``[N, C]`` per-example sums.

Each per-example sum reduces the same values with the same ``torch.sum`` as
the generic kernel's (over an example's contiguous values of one channel in
NCHW, over its rows in channels-last memory), so the statistics are within the
accuracy contract and, where PyTorch reduces a block as it reduces the whole
batch, the same bits. Taken: float32 and float64 batches (half ones widened to
float32, ``compute``) of rank 3 to 5 on CPU, of more than one block (a batch
that is one block gains nothing from blocks, and the generic kernel issues
fewer operations: at 8×32×16×16 it took 67 µs to these 92), laid out channels
first or channels last, eagerly and without autograd recording, with weights
of shape ``[N, 1, ...]`` and ``empty="zero"`` (the layer's and
``tf.nn.weighted_moments``' ``div_no_nan``). Other weights (a Keras mask), GPUs
(where the batch is one block) and smaller batches take the generic kernel.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._lib._typing import Namespace
from ._torch_blocks import blocked_on_cpu, needs_autograd, outer_blocks
from ._torch_moments import grouped

_DTYPES = (torch.float32, torch.float64)
_HALF = (torch.float16, torch.bfloat16)


def weighted_local_moments(
    x: Tensor, axes: tuple[int, ...], weights: Any, empty: str, *, xp: Namespace, compute: Any = None
) -> Any:
    """``(Σw, Σw·x / Σw, Σw·(x − mean)²)`` keepdims over every axis but the channel's."""
    if not blocked_on_cpu(x):  # first: the one test a small batch fails
        return NotImplemented
    dtype = x.dtype if compute is None else compute
    kept = [axis for axis in range(x.ndim) if axis not in axes]
    if (
        empty != "zero"
        or len(kept) != 1
        or kept[0] == 0
        or x.ndim < 3
        or dtype not in _DTYPES
        or (x.dtype != dtype and (x.dtype not in _HALF or dtype != torch.float32))
        or not _one_per_example(weights, x)
        or torch._C._are_functorch_transforms_active()
        or needs_autograd([x, weights])
    ):
        return NotImplemented
    channel = kept[0]
    examples = _examples(x, channel)
    if examples is None:
        return NotImplemented
    values, dim = examples
    channels = x.shape[channel]
    per_example = x.numel() // (x.shape[0] * channels)
    # The generic kernel's arithmetic on the [N, C] per-example sums (its weights
    # in the compute dtype, broadcast over the channels).
    weight = weights.reshape(-1, 1).to(dtype).expand(-1, channels)
    count = torch.sum(weight, 0) * float(per_example)
    blocks = [values[rows] for rows in outer_blocks(values)]
    sums = torch.cat([torch.sum(block.to(dtype), dim) for block in blocks])
    total = torch.sum(weight * sums, 0)
    empty_channel = count == 0
    safe_count = torch.where(empty_channel, torch.ones_like(count), count)
    mean = torch.where(empty_channel, torch.zeros_like(total), total / safe_count)
    mean_b = mean.view((1, channels, 1) if dim == 2 else (1, 1, channels))
    # torch.sub widens a half block exactly (type promotion to the mean's dtype).
    squares = torch.cat([torch.sum(torch.sub(block, mean_b).square_(), dim) for block in blocks])
    m2 = torch.sum(weight * squares, 0)
    keepdims = tuple(channels if axis == channel else 1 for axis in range(x.ndim))
    return count.reshape(keepdims), mean.reshape(keepdims), m2.reshape(keepdims)


def _one_per_example(weights: Any, x: Tensor) -> bool:
    """Weights of shape ``[N, 1, ...]`` (x's rank), real, on x's device."""
    return (
        isinstance(weights, torch.Tensor)
        and weights.ndim == x.ndim
        and weights.shape[0] == x.shape[0]
        and all(size == 1 for size in weights.shape[1:])
        and not weights.is_complex()
        and weights.device == x.device
    )


def _examples(x: Tensor, channel: int) -> tuple[Tensor, int] | None:
    """x's channel-grouped view (``_torch_moments.grouped``) with the examples on the
    first axis, ``[N, C, S]`` or ``[N, S, C]``, and the axis that holds an example's
    values of one channel; None where x is laid out otherwise."""
    view = grouped(x, channel)
    if view is None:
        return None
    if view.dims == (0, 2):
        return view.values, 2
    return view.values.reshape(x.shape[0], -1, x.shape[channel]), 1  # rows of C, per example

"""Cache-sized blocks of a batch, shared by the PyTorch fast paths.

On CPU, fresh memory for a whole-tensor temporary (page faults, handed back on
free) costs as much as the arithmetic; the blocked passes work through the
batch's first axis in blocks of about ``BLOCK_ELEMENTS`` values instead, with
block-sized temporaries. On a GPU the caching allocator makes temporaries
cheap while every block would cost kernel launches, so the batch is one block.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: Values per block of the blocked passes (statistics, y, backward): cache-sized.
BLOCK_ELEMENTS = 1 << 19


def outer_blocks(x: Tensor) -> list[slice]:
    """Slices of the first axis of about ``BLOCK_ELEMENTS`` values each (at least one row)."""
    if x.device.type != "cpu":
        return [slice(None)]
    step = max(1, BLOCK_ELEMENTS // max(1, x[0].numel())) if x.shape[0] else 1
    return [slice(start, start + step) for start in range(0, max(x.shape[0], 1), step)]


def blocked_on_cpu(x: Tensor) -> bool:
    """Whether half input is widened block by block: more than one block, on CPU, eagerly
    (a smaller batch takes the whole-tensor expression, fewer operations per call)."""
    return x.is_cpu and x.numel() > BLOCK_ELEMENTS and not torch.compiler.is_compiling()


def needs_autograd(tensors: Any) -> bool:
    """Whether autograd would record an operation on any of ``tensors`` (None: an absent one)."""
    if torch.is_grad_enabled():
        for tensor in tensors:  # a loop: any() of a generator costs a small call more
            if tensor is not None and tensor.requires_grad:
                return True
    return False

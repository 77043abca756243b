"""PyTorch's ``normalize``: ``tf.nn.batch_normalization``, ``x·inv + (offset − mean·inv)``.

The generic expression, with the shift added in place into the product
(bit-identical, one allocation and one pass fewer); half input the Keras layer
normalizes in float32 is widened block by block on CPU.

Not PyTorch's inference kernel, although its formula is this one
(``y = x·α + (bias − mean·α)``) and it takes one pass: it rounds like a fused
multiply-add, and so loses TensorFlow's exact cancellation where x equals the
mean (a batch of one value per channel, a constant channel): there TensorFlow's
``round(x·inv) + round(offset − round(mean·inv))`` is exact to the offset's
rounding while the kernel's result keeps ``mean·inv``'s rounding error, up to
three times the conformance tolerance on the suite's one-value-per-channel cases.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._lib import _numerics
from .._lib._backends import operand
from .._lib._typing import Namespace
from ._torch_blocks import blocked_on_cpu, needs_autograd, outer_blocks


def normalize(
    x: Tensor, mean: Tensor, variance: Tensor, offset: Tensor | None, scale: Tensor | None,
    variance_epsilon: float, *, xp: Namespace, compute: torch.dtype | None = None,
    channel: int | None = None,
) -> Any:
    """The generic ``x·inv + shift``, with the shift added in place (bit-identical);
    ``[C]`` parameters along ``channel`` as the generic kernel takes them.

    With a wider ``compute`` dtype (half input on the Keras path), on CPU and
    without autograd, block by block: each block is widened, normalized and
    rounded into the output while it is in cache (the generic kernel's
    operations in its order), never the whole widened input at once.
    """
    if torch._C._are_functorch_transforms_active():
        return NotImplemented  # in-place ops under vmap/grad transforms: stay generic
    blocked = compute is not None and blocked_on_cpu(x)
    if blocked and needs_autograd((x, mean, variance, offset, scale)):
        return NotImplemented
    inv, shift = inverse_and_shift(x, mean, variance, offset, scale, variance_epsilon, channel, xp)
    if compute is not None:
        if not blocked or not (_broadcasts_into(inv, x) and _broadcasts_into(shift, x)):
            return NotImplemented
        inv, shift = inv.to(compute), shift.to(compute)
        y = torch.empty_like(x)
        for rows in outer_blocks(x):
            y[rows].copy_(x[rows].to(compute).mul_(_rows_of(inv, rows, x)).add_(_rows_of(shift, rows, x)))
        return y
    return affine(x, inv, shift)


def inverse_and_shift(
    x: Tensor, mean: Tensor, variance: Tensor, offset: Tensor | None, scale: Tensor | None,
    variance_epsilon: float, channel: int | None, xp: Namespace, *, eager: bool = False,
) -> tuple[Tensor, Tensor]:
    """The generic kernel's ``inv = rsqrt(variance + ε)·scale`` and ``shift = offset − mean·inv``,
    shaped along x's ``channel`` (as they are for None); ``eager`` as ``operand`` takes it."""
    inv = inverse_std_of(variance, variance_epsilon, xp, eager=eager)
    if scale is not None:
        inv = inv * scale
    shift = -mean * inv if offset is None else offset - mean * inv
    if channel is not None:
        inv, shift = per_channel(inv, x, channel), per_channel(shift, x, channel)
    return inv, shift


def affine(x: Tensor, inv: Tensor, shift: Tensor) -> Tensor:
    """``x·inv + shift``, both terms in x's dtype, the shift added in place into the product."""
    # Each cast only where needed: a same-dtype .to is a call too, on an MLP's small batch.
    y = x * (inv if inv.dtype == x.dtype else inv.to(x.dtype))
    if shift.dtype != x.dtype:
        shift = shift.to(x.dtype)
    if not _broadcasts_into(shift, y):
        return y + shift
    return y.add_(shift)


def per_channel(vector: Tensor, x: Tensor, channel: int) -> Any:
    """``[C]`` broadcast along ``channel`` of x (as it is when the channels are last)."""
    if channel == x.ndim - 1:
        return vector
    shape = [1] * x.ndim
    shape[channel] = -1
    return vector.view(*shape)  # sizes as arguments: a third quicker than as one list


def inverse_std_of(variance: Tensor, epsilon: float, xp: Namespace, *, eager: bool = False) -> Tensor:
    """The generic kernels' ``rsqrt(variance + ε)`` (``_lib._numerics.rsqrt``: ``1 / sqrt``),
    the same bits: for float32 and float64 ``torch.reciprocal`` of the root, without the
    Python-level ``Tensor.__rdiv__`` (a reciprocal and a product by 1), both in place
    in the new sum where autograd does not record it (a small call's allocations are a
    third of an operation's cost); half precision as the generic one (in float32,
    rounded once). ``eager`` as ``operand`` takes it."""
    value: Tensor = variance + operand(epsilon, variance, eager=eager)
    if value.dtype not in (torch.float32, torch.float64):
        result: Tensor = _numerics.rsqrt(value, xp)
        return result
    if needs_autograd((value,)):  # sqrt's and reciprocal's backward read their results
        return torch.reciprocal(torch.sqrt(value))
    return value.sqrt_().reciprocal_()


def _broadcasts_into(parameter: Tensor, x: Tensor) -> bool:
    """Whether ``parameter`` broadcasts to x's shape without growing it (in Python:
    ``torch.broadcast_shapes`` cost more than the arithmetic on an MLP's batch)."""
    if parameter.ndim > x.ndim:
        return False
    offset = x.ndim - parameter.ndim
    for axis, length in enumerate(parameter.shape):  # a loop: all() of a generator costs more
        if length != 1 and length != x.shape[offset + axis]:
            return False
    return True


def _rows_of(parameter: Tensor, rows: slice, x: Tensor) -> Tensor:
    """A parameter broadcast to x, restricted to a block of x's first axis
    (all of it where it does not vary along that axis)."""
    return parameter if parameter.ndim < x.ndim or parameter.shape[0] == 1 else parameter[rows]

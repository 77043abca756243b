"""Ready ``cross_replica_sum`` reducers for synchronized batch normalization.

Pass one as ``cross_replica_sum=`` to ``batch_norm``, ``batch_norm_vjp``,
``moments``, ``weighted_moments`` or ``recalibrate``. Each returns the sum of
one small array (a few per-channel statistics stacked together) over every
replica, with the argument's shape. The libraries are imported when a reducer
is made, never by ``import bn_portable``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def torch_cross_replica_sum(group: Any = None) -> Callable[[Any], Any]:
    """A sum over the processes of ``group`` (default: all) with ``torch.distributed``.

    An all-reduce that autograd differentiates (its gradient is the
    all-reduce of the incoming gradient): autograd through a synchronized
    forward then gives every replica its part of the global batch's gradient.
    The process group must be initialized (any backend: gloo, NCCL). The
    argument is never modified (the sum goes into a copy).
    """
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch_cross_replica_sum needs an initialized torch.distributed process group: "
            "call torch.distributed.init_process_group first"
        )
    chosen = dist.group.WORLD if group is None else group

    class AllReduceSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, array: Any) -> Any:
            total = array.clone(memory_format=torch.contiguous_format)
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=chosen)
            return total

        @staticmethod
        def backward(ctx: Any, gradient: Any) -> Any:
            # d(Σ_r a_r)/d a_k = 1 for every replica's output: the gradient of
            # this replica's input sums the gradients of every replica's output.
            # torch.autograd.Function.apply is not annotated.
            return AllReduceSum.apply(gradient)  # type: ignore[no-untyped-call]

    def cross_replica_sum(array: Any) -> Any:
        # torch.autograd.Function.apply is not annotated.
        return AllReduceSum.apply(array)  # type: ignore[no-untyped-call]

    return cross_replica_sum


def jax_cross_replica_sum(axis_name: Any) -> Callable[[Any], Any]:
    """``jax.lax.psum`` over ``axis_name``, for code under ``shard_map`` or ``pmap``.

    ``axis_name`` is the mapped axis (or a tuple of axes) the batch is split
    along. Under a plain ``jax.jit`` of a globally sharded array no reducer is
    needed: the array is already the global batch, and XLA inserts the
    collectives itself.
    """
    if axis_name is None:
        raise TypeError("axis_name must be the mapped axis name (or a tuple of names), got None")
    from jax import lax

    def cross_replica_sum(array: Any) -> Any:
        return lax.psum(array, axis_name)

    return cross_replica_sum


__all__ = ["jax_cross_replica_sum", "torch_cross_replica_sum"]

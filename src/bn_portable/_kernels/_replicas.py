"""Summing small per-replica arrays over every replica, in one reducer call.

``cross_replica_sum(a)`` is the caller's reducer: it returns the sum of the
small array ``a`` over every replica, with ``a``'s shape (an all-reduce; see
``bn_portable.distributed``). Statistics stack what they need into one array
so that each pass of a synchronized computation is one collective.
"""

from __future__ import annotations

from typing import Any

from .._lib._typing import CrossReplicaSum, Namespace


def sum_across(reducer: CrossReplicaSum, parts: list[Any], *, xp: Namespace) -> list[Any]:
    """Each array of ``parts`` (one shape) summed over the replicas, in one reducer call."""
    stacked = xp.stack(parts, axis=0)
    total = reducer(stacked)
    if tuple(total.shape) != tuple(stacked.shape):
        raise ValueError(
            f"cross_replica_sum must return an array of its argument's shape {tuple(stacked.shape)} "
            f"(the sum over replicas); got shape {tuple(total.shape)}"
        )
    return [total[i, ...] for i in range(len(parts))]

"""The fused training kernel: batch statistics and the normalized output, in as few passes as the layout allows.

TensorFlow's order is kept: ``mean = Σx·float32(1/n)`` in float32, then
``variance = Σ(x − mean)²·float32(1/n)`` from that rounded mean (two passes,
never ``E[x²] − E[x]²``), then the fused kernel's ``affine`` with those
statistics. The sums keep the contract of ``_reductions``.

- Long runs (NCHW): channel groups one at a time. A channel's statistics need
  no other channel, so a group's sum, centred squares and output all happen
  while it is in cache: ``x`` streams through memory once and ``y`` once.
- Short runs (NHWC): the mean needs the whole batch before any centring, so
  three passes: one BLAS product for the sums, a centred-squares pass, and
  the output pass. float32 ``x − mean`` is written into ``y`` by the squares
  pass (for a small input in wide rows, ``Plan.whole_pass``, by one ufunc over
  every row before it), and the output pass scales it in place.

The kernel stays on the calling thread whatever ``BN_PORTABLE_NUM_THREADS``
says: on 2 cores, sharing its blocks did not make it faster (its BLAS sums,
called from two threads at once, contend).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from .. import _threads
from ._elementwise import affine_rows, fused_factor
from ._plan import Plan, as_rows, channel_groups, grouped, row, runs_whole, tile
from ._reductions import centred_squares, channel_sums, chunked_column_sums, row_dots, row_sums


def train(plan: Plan, x: Any, y: Any, scale: Any, offset: Any, epsilon: Any) -> tuple[Any, Any]:
    """Batch mean and biased variance (``[C]``, float32); the normalized ``x`` into ``y``."""
    inverse_count = np.float32(1.0 / plan.count)
    if plan.long_runs:
        return _train_channel_groups(plan, x, y, scale, offset, epsilon, inverse_count)
    return _train_rows(plan, x, y, scale, offset, epsilon, inverse_count)


def _train_channel_groups(
    plan: Plan, x: Any, y: Any, scale: Any, offset: Any, epsilon: Any, inverse_count: Any
) -> tuple[Any, Any]:
    x3, y3 = grouped(plan, x, y)
    mean = np.empty(plan.channels, dtype=np.float32)
    variance = np.empty(plan.channels, dtype=np.float32)
    work = partial(
        _train_groups, x3, y3, mean, variance, scale, offset, epsilon, inverse_count, plan.segment
    )
    _threads.in_shares(work, channel_groups(plan), plan.threads)
    return mean, variance


def _train_groups(
    x3: Any,
    y3: Any,
    mean: Any,
    variance: Any,
    scale: Any,
    offset: Any,
    epsilon: Any,
    inverse_count: Any,
    segment: int,
    groups: list[tuple[int, int, list[tuple[int, int]]]],
) -> None:
    for c0, c1, ranges in groups:
        mean[c0:c1], variance[c0:c1] = _train_group(
            x3, y3, c0, c1, ranges, scale, offset, epsilon, inverse_count, segment
        )


def _train_group(
    x3: Any,
    y3: Any,
    c0: int,
    c1: int,
    ranges: list[tuple[int, int]],
    scale: Any,
    offset: Any,
    epsilon: Any,
    inverse_count: Any,
    segment: int,
) -> tuple[Any, Any]:
    """Channels ``c0:c1`` over the row ranges: their mean and variance; their output into ``y3``.

    float32 ``x − mean`` goes into ``y`` (the output pass scales it in place);
    float16 is widened into a float32 copy kept for both later passes when the
    group is one block, and widened again per block otherwise.
    """
    in_place = x3.dtype == np.float32
    single = len(ranges) == 1
    kept: Any = None
    total = np.zeros(c1 - c0, dtype=np.float64)
    for a0, a1 in ranges:
        block = x3[a0:a1, c0:c1]
        if not in_place:
            block = block.astype(np.float32)  # exact; reused for x − mean
            kept = block
        total += row_sums(block, segment).sum(axis=0)
    group_mean = total.astype(np.float32) * inverse_count
    mean_column = group_mean[:, None]
    squares = np.zeros(c1 - c0, dtype=np.float64)
    for a0, a1 in ranges:
        if in_place:
            d = np.subtract(x3[a0:a1, c0:c1], mean_column, out=y3[a0:a1, c0:c1])
        elif single:
            d = np.subtract(kept, mean_column, out=kept)
        else:
            d = np.subtract(x3[a0:a1, c0:c1], mean_column, dtype=np.float32)
        squares += row_dots(d, None, segment).sum(axis=0)
    group_variance = squares.astype(np.float32) * inverse_count
    factor_column = fused_factor(group_variance, scale[c0:c1], epsilon)[:, None]
    offset_column = offset[c0:c1, None]
    for a0, a1 in ranges:
        if in_place:
            d = y3[a0:a1, c0:c1]
        elif single:
            d = kept
        else:
            d = np.subtract(x3[a0:a1, c0:c1], mean_column, dtype=np.float32)
        np.multiply(d, factor_column, out=d)
        np.add(d, offset_column, out=y3[a0:a1, c0:c1])
    return group_mean, group_variance


def _train_rows(
    plan: Plan, x: Any, y: Any, scale: Any, offset: Any, epsilon: Any, inverse_count: Any
) -> tuple[Any, Any]:
    mean = channel_sums(plan, x).astype(np.float32) * inverse_count
    x2, y2 = as_rows(plan, x, y)
    centred_in_y = x.dtype == np.float32
    # A whole pass (Plan.whole_pass) centres every row at once; the squares are then
    # summed block by block from y as before (the same blocks: the same sums).
    whole = runs_whole(plan, x2, np.float32)
    lay_out = row if whole else tile
    mean_laid = lay_out(plan, mean)
    if whole:
        np.subtract(x2, mean_laid, out=y2)
        terms = partial(_squares_of_centred, y2)
    elif centred_in_y:
        terms = partial(_centred_squares_keeping_centred, x2, y2, mean_laid)
    else:  # float16 blocks are not kept: the output pass centres them again
        terms = partial(centred_squares, x2, mean_laid)
    total = chunked_column_sums(plan, terms, np.dtype(np.float32))
    variance = total.reshape(plan.channels, plan.inner).sum(axis=1).astype(np.float32)
    variance *= inverse_count
    factor = lay_out(plan, fused_factor(variance, scale, epsilon))
    affine_rows(plan, x2, y2, mean_laid, factor, lay_out(plan, offset), centred_in_y=centred_in_y)
    return mean, variance


def _squares_of_centred(y2: Any, r0: int, r1: int, scratch: Any) -> Any:
    """``(x − mean)²`` of rows ``r0:r1`` in ``scratch``, from y, which holds ``x − mean``."""
    centred = y2[r0:r1].reshape(-1)
    return np.multiply(centred, centred, out=scratch)


def _centred_squares_keeping_centred(
    x2: Any, y2: Any, mean_tile: Any, r0: int, r1: int, scratch: Any
) -> Any:
    """``(x − mean)²`` of rows ``r0:r1`` in ``scratch``, leaving ``x − mean`` in ``y``."""
    size = (r1 - r0) * x2.shape[1]
    centred = np.subtract(x2[r0:r1].reshape(-1), mean_tile[:size], out=y2[r0:r1].reshape(-1))
    return np.multiply(centred, centred, out=scratch)

"""How the NumPy fast paths see an input and cut it into blocks: plain data from the shape.

The input is viewed as ``(A, C, S)``: ``A`` everything before the channel
axis, ``C`` channels, ``S`` everything after it (NCHW: ``A = N``,
``S = H·W``; NHWC: ``A = N·H·W``, ``S = 1``). Two ways of blocking follow:

- long runs (``S ≥ LONG_RUN``, NCHW): groups of whole channels of about
  ``CHANNEL_GROUP`` values (a channel longer than that is cut along ``A``).
  A channel's statistics need no other channel, so a group can be summed,
  centred and normalized while it is in cache.
- short runs (NHWC): blocks of whole rows (``C·S`` values each) of about
  ``ROW_BLOCK`` values; per-channel parameters are tiled once to a block's
  length so that every ufunc runs over one contiguous stretch.

The blocking decides the order of every addition, so it depends on the shape
and the dtype's size only, never on the number of threads. Tests shrink the
constants below (``tests/conftest.py``, ``tiny_numpy_blocks``) so that small
inputs run the multi-block code; they are read when a ``Plan`` is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _threads

#: Inputs with fewer values take the generic path: a handful of whole-array
#: ufuncs is quicker there than the blocked loop's per-block calls.
SMALLEST_INPUT = 1 << 16
#: The same for float16: NumPy's float16 casts are slow per call, so blocked
#: conversion only pays on large inputs.
SMALLEST_HALF_INPUT = 1 << 20
#: Inputs with fewer values stay on the calling thread even when threads are
#: on: handing work to another thread costs more than it saves.
SMALLEST_SHARED_INPUT = 1 << 18
#: A channel's run of at least this many contiguous values counts as long.
LONG_RUN = 128
#: Values per block of whole rows: the block, its squares and the tiles stay
#: in L2 cache.
ROW_BLOCK = 1 << 15
#: Short-run inputs of at most this many values, in rows of at least
#: ``WIDE_ROW`` values, take each elementwise pass whole: one ufunc over every
#: row, the parameters broadcast along them. There the row-block loop and its
#: tiles cost more than cache blocking saves (float32 inference on 2 cores took
#: 0.50–0.64 of the blocked time at 256×512 and 1024×256); rows of fewer values
#: make broadcasting's inner loop too short (32768×8 took 1.6× as long whole).
#: Output passes write straight into y; the moments' centred squares, which have
#: no output to live in, into a temporary of the input's size (1 MB of float32 at most).
WHOLE_PASS_INPUT = 1 << 18
WIDE_ROW = 32
#: Values per channel group: one group is read from memory once.
CHANNEL_GROUP = 1 << 17
#: Smallest block, whatever the input size (below it, call overhead dominates).
SMALLEST_BLOCK = 1 << 12
#: Row slabs summed element by element in the compute dtype before a float64
#: total; also the rows per output of the one BLAS product that sums rows.
ROWS_PER_PARTIAL = 64
#: Row blocks added element by element in the compute dtype before their
#: column sums.
BLOCKS_PER_CHUNK = 16
#: Longest contiguous stretch of one channel summed in the compute dtype.
SEGMENT = 4096


@dataclass(frozen=True)
class Plan:
    """An input as ``(A, C, S)`` and how it is cut; every field follows from the shape.

    ``threads`` only says how many threads share the blocks; nothing else
    depends on it.
    """

    outer: int
    channels: int
    inner: int
    long_runs: bool
    block: int
    rows_per_block: int
    rows_per_partial: int
    blocks_per_chunk: int
    segment: int
    threads: int
    #: The elementwise passes run over the whole input at once (``WHOLE_PASS_INPUT``).
    whole_pass: bool
    #: Values per channel (``A·S``).
    count: int
    #: Values per row (``C·S``); fields, not properties: the block loops read them often.
    width: int


def plan_for(shape: tuple[int, ...], channel: int, itemsize: int, *, shared: bool) -> Plan:
    """The plan of an input of ``shape`` with channels along ``channel``.

    ``shared``: the kernel may share its blocks among threads (when threads
    are on and the input is large enough).
    """
    shape = tuple(int(s) for s in shape)
    outer, channels = math.prod(shape[:channel]), shape[channel]
    inner = math.prod(shape[channel + 1 :])
    size = outer * channels * inner
    long_runs = inner >= LONG_RUN
    block = _block_size(size, itemsize, long_runs)
    return Plan(
        outer=outer,
        channels=channels,
        inner=inner,
        long_runs=long_runs,
        block=block,
        rows_per_block=_rows_per_block(block, outer, channels * inner),
        rows_per_partial=ROWS_PER_PARTIAL,
        blocks_per_chunk=BLOCKS_PER_CHUNK,
        segment=SEGMENT,
        threads=_threads.thread_count() if shared and size >= SMALLEST_SHARED_INPUT else 1,
        whole_pass=not long_runs and size <= WHOLE_PASS_INPUT and channels * inner >= WIDE_ROW,
        count=outer * inner,
        width=channels * inner,
    )


def _block_size(size: int, itemsize: int, long_runs: bool) -> int:
    # Small inputs get smaller blocks, so that the block-sized buffers stay a
    # small fraction of the input (peak memory ~ output + 1/5 of the input).
    if long_runs and itemsize == 4:
        # float32 groups are centred in place in the output: no block-sized
        # buffer, so the group size costs no memory.
        return CHANNEL_GROUP
    if long_runs:
        # float16 groups are widened into a float32 copy (1/8 of the input).
        return min(CHANNEL_GROUP, max(SMALLEST_BLOCK, size // 16))
    # Three block-sized float32 tiles and two block-sized float32 buffers (per
    # thread): together at most about a fifth of the input on one thread.
    return min(ROW_BLOCK, max(SMALLEST_BLOCK, size * itemsize // 100))


def _rows_per_block(block: int, outer: int, width: int) -> int:
    """Rows of ``width`` values per block: a multiple of ``ROWS_PER_PARTIAL`` when there are many."""
    rows = max(1, block // width)
    if rows >= 2 * ROWS_PER_PARTIAL:
        rows -= rows % ROWS_PER_PARTIAL
    return min(rows, outer)


def row_blocks(plan: Plan) -> list[tuple[int, int]]:
    """``(r0, r1)`` blocks of whole rows, ``rows_per_block`` each (the last may be short)."""
    rows = plan.rows_per_block
    return [(r0, min(plan.outer, r0 + rows)) for r0 in range(0, plan.outer, rows)]


def channel_groups(plan: Plan) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """``(c0, c1, row ranges)``: groups of whole channels, or one channel cut along ``A``."""
    if plan.count <= plan.block:
        step = max(1, plan.block // plan.count)
        return [
            (c0, min(plan.channels, c0 + step), [(0, plan.outer)])
            for c0 in range(0, plan.channels, step)
        ]
    rows = max(1, plan.block // plan.inner)
    ranges = [(a0, min(plan.outer, a0 + rows)) for a0 in range(0, plan.outer, rows)]
    return [(c0, c0 + 1, ranges) for c0 in range(plan.channels)]


def channel_blocks(plan: Plan) -> list[tuple[int, int, int, int]]:
    """``(a0, a1, c0, c1)``: the blocks of ``channel_groups``, one after another."""
    return [(a0, a1, c0, c1) for c0, c1, ranges in channel_groups(plan) for a0, a1 in ranges]


# ---------------------------------------------------------------------------
# Arrays and parameters laid out as the plan sees them
# ---------------------------------------------------------------------------


def grouped(plan: Plan, *arrays: Any) -> list[Any]:
    """Each array viewed as ``(A, C, S)``."""
    return [a.reshape(plan.outer, plan.channels, plan.inner) for a in arrays]


def as_rows(plan: Plan, *arrays: Any) -> list[Any]:
    """Each array viewed as ``A`` rows of ``C·S`` values."""
    return [a.reshape(plan.outer, plan.width) for a in arrays]


def row(plan: Plan, per_channel: Any) -> Any:
    """A ``[C]`` vector laid out as one row of ``C·S`` values (broadcast along the rows)."""
    if plan.inner > 1:
        return np.repeat(np.asarray(per_channel).reshape(-1), plan.inner)
    return per_channel


def runs_whole(plan: Plan, x2: Any, arithmetic: Any) -> bool:
    """Whether a short-run pass computing in ``arithmetic`` runs whole (``Plan.whole_pass``):
    only where that is x's own dtype, so that x's rows go through one ufunc as they are."""
    return plan.whole_pass and x2.dtype == arithmetic


def tile(plan: Plan, per_channel: Any) -> Any:
    """A ``[C]`` vector laid out as ``rows_per_block`` rows of ``C·S`` values."""
    return np.tile(row(plan, per_channel), plan.rows_per_block)


def columns(*vectors: Any) -> list[Any]:
    """``[C]`` (or one-value) vectors as ``[C, 1]`` (``[1, 1]``) columns; None stays None."""
    return [
        None if v is None else (v.reshape(-1, 1) if v.size > 1 else v.reshape(1, 1))
        for v in vectors
    ]


def channel_rows(column: Any, c0: int, c1: int) -> Any:
    """Channels ``c0:c1`` of a column from ``columns`` (a one-value column serves all)."""
    return column if column.shape[0] == 1 else column[c0:c1]


def compute_dtype(dtype: Any) -> np.dtype[Any]:
    """The dtype sums and elementwise steps run in: float32 for float16, else x's own."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)

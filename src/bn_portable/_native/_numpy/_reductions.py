"""Per-channel sums of the NumPy fast paths, and the one contract they all keep.

Summation contract
------------------
Every per-channel sum (``Σx``, ``Σ(x − mean)²``, ``Σdy``, ``Σdy·(x − mean)``)
is a **float64 total of partial sums formed in the compute dtype** (float32
for float16 and float32 input, float64 for float64 input). Each partial
covers a bounded set of terms that the ``Plan`` fixes from the shape alone;
the partials are added in float64, in an order fixed by the shape, and the
caller rounds the total once to the compute dtype. Nothing depends on the
number of threads. The partials are formed three ways:

1. **Contiguous stretches** (long runs, ``S ≥ LONG_RUN``: NCHW): one partial
   per stretch of at most ``SEGMENT`` contiguous values of one channel in one
   outer index. ``Σx`` and ``Σdy`` use ``np.add.reduce`` (NumPy's pairwise
   summation); ``Σ(x − mean)²`` and ``Σdy·(x − mean)`` use ``np.vecdot``
   (BLAS's dot product, in BLAS's order of additions).
2. **One BLAS product over rows** (short runs: ``Σx`` and ``Σdy`` of float32
   and float64 input): the rows are cut into at most ``ROWS_PER_PARTIAL``
   groups of consecutive rows, and one vector-matrix product adds the groups:
   each partial is a sum, in BLAS's order, of at most ``ROWS_PER_PARTIAL``
   values, one per group; rows left over after equal groups go straight
   into the float64 totals.
3. **Element-by-element running sums** (short runs: ``Σx`` and ``Σdy`` of float16,
   ``Σ(x − mean)²``, ``Σdy·(x − mean)``): up to ``BLOCKS_PER_CHUNK``
   consecutive row blocks are added element by element into one block, and
   that block's rows, as ``ROWS_PER_PARTIAL`` slabs, are added element by
   element again (one ``np.add.reduce`` over the slabs): each partial adds,
   in an order fixed by the shape, at most
   ``BLOCKS_PER_CHUNK·ROWS_PER_PARTIAL`` values (1024 by default; a block
   of fewer than ``2·ROWS_PER_PARTIAL`` rows, or not a multiple of it, skips
   the slabs and its running sums of at most ``BLOCKS_PER_CHUNK`` values go
   straight into float64).

Frequency weights that are constant along ``S`` (one per row ``A``: tf-slim's
per-example weights, a Keras mask over an NHWC batch's pixels) enter as
``tf.nn.weighted_moments`` forms them: on short runs each product ``w·v`` is
rounded to the compute dtype and summed as in point 3; on long runs each
stretch's partial sum is multiplied by its row's weight in float64, which
rounds nothing of its own.

So the compute-dtype error of a sum is that of one partial (at most a few
thousand terms), not of the whole batch, and the float64 totals add nearly
none: on 32x64x56x56 float32 (100 352 values per channel, NCHW and NHWC) the
statistics are within 1.5 ulps of the exactly rounded ones. The generic
kernels accumulate float32 in float64 (``_lib._sums``) and are exact to
their final rounding, so the two differ by those ulps; the tests check both
against a float64 reference. The BLAS partials carry the BLAS build's own
order and rounding, so those sums may differ in the last bits between BLAS
builds; every other order is NumPy's and fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from .. import _threads
from ._plan import (
    Plan,
    as_rows,
    channel_blocks,
    compute_dtype,
    grouped,
    row,
    row_blocks,
    runs_whole,
    tile,
)

#: Flat values of rows ``r0:r1``, possibly written into ``scratch``.
RowTerms = Callable[[int, int, Any], Any]


# ---------------------------------------------------------------------------
# The sums the kernels ask for
# ---------------------------------------------------------------------------


def channel_sums(plan: Plan, x: Any, row_weights: Any = None) -> Any:
    """``Σx`` per channel, float64; ``Σw·x`` with ``row_weights`` (one per row ``A``,
    in the compute dtype: frequency weights constant along ``S``)."""
    if plan.long_runs:
        (x3,) = grouped(plan, x)
        if x3.dtype != np.float16 and row_weights is None:
            return row_sums(x3, plan.segment).sum(axis=0)  # the whole input in one pass
        block_sums = partial(_widened_block_sums, x3, plan.segment, row_weights)
        return channel_block_totals(plan, block_sums)
    (x2,) = as_rows(plan, x)
    if row_weights is not None:
        terms = partial(_weighted, partial(_rows_as_they_are, x2), row_weights, plan.width)
        columns = chunked_column_sums(plan, terms, row_weights.dtype)
    elif x2.dtype != np.float16:
        columns = _product_column_sums(x2, plan.rows_per_partial)
    else:
        columns = chunked_column_sums(plan, partial(_rows_as_they_are, x2), np.dtype(np.float32))
    return columns.reshape(plan.channels, plan.inner).sum(axis=1)


def squared_deviation_sums(plan: Plan, x: Any, mean: Any, row_weights: Any = None) -> Any:
    """``Σ(x − mean)²`` per channel, float64, with ``mean`` in the compute dtype;
    ``Σw·(x − mean)²`` with ``row_weights`` (as in ``channel_sums``)."""
    mean = np.asarray(mean, dtype=compute_dtype(x.dtype)).reshape(-1)
    if plan.long_runs:
        (x3,) = grouped(plan, x)
        block_sums = partial(_squared_deviation_block_sums, x3, mean, plan.segment, row_weights)
        return channel_block_totals(plan, block_sums)
    (x2,) = as_rows(plan, x)
    if row_weights is None and runs_whole(plan, x2, mean.dtype):
        # Every row centred and squared by one ufunc each (Plan.whole_pass), then summed
        # in the same blocks: the same terms and sums as block by block, the same bits.
        squares = np.subtract(x2, row(plan, mean))
        terms = partial(_rows_as_they_are, np.multiply(squares, squares, out=squares))
    else:
        terms = partial(centred_squares, x2, tile(plan, mean))
    if row_weights is not None:
        terms = partial(_weighted, terms, row_weights, plan.width)
    totals = chunked_column_sums(plan, terms, mean.dtype)
    return totals.reshape(plan.channels, plan.inner).sum(axis=1)


def gradient_sums(plan: Plan, dy: Any, x: Any, mean: Any) -> tuple[Any, Any]:
    """``Σdy`` and ``Σdy·(x − mean)`` per channel, float64, with ``mean`` in the compute dtype."""
    compute = compute_dtype(x.dtype)
    if plan.long_runs:
        x3, dy3 = grouped(plan, x, dy)
        block_sums = partial(_gradient_block_sums, dy3, x3, mean, compute, plan.segment)
        totals = channel_block_totals(plan, block_sums)
        return totals[0], totals[1]
    x2, dy2 = as_rows(plan, x, dy)
    products = partial(_centred_products, x2, dy2, tile(plan, mean), compute)
    sum_dy_centred = chunked_column_sums(plan, products, compute)
    sum_dy_centred = sum_dy_centred.reshape(plan.channels, plan.inner).sum(axis=1)
    return channel_sums(plan, dy), sum_dy_centred


# ---------------------------------------------------------------------------
# Long runs: partials over contiguous stretches of one channel
# ---------------------------------------------------------------------------


def channel_block_totals(plan: Plan, block_sums: Callable[[int, int, int, int], Any]) -> Any:
    """Per-channel float64 totals of ``block_sums`` over the plan's channel blocks, in block order.

    ``block_sums(a0, a1, c0, c1)`` returns ``[..., c1 − c0]`` sums (several
    kinds of sum may be stacked on the leading axes).
    """
    blocks = channel_blocks(plan)
    partials = _threads.in_shares(partial(_each_block, block_sums), blocks, plan.threads)
    total = np.zeros((*np.shape(partials[0])[:-1], plan.channels), dtype=np.float64)
    for (_, _, c0, c1), block_total in zip(blocks, partials):
        total[..., c0:c1] += block_total
    return total


def _each_block(
    block_sums: Callable[..., Any], blocks: list[tuple[int, int, int, int]]
) -> list[Any]:
    return [block_sums(*block) for block in blocks]


def _widened_block_sums(
    x3: Any, segment: int, row_weights: Any, a0: int, a1: int, c0: int, c1: int
) -> Any:
    block = x3[a0:a1, c0:c1].astype(compute_dtype(x3.dtype), copy=False)
    return _over_rows(row_sums(block, segment), row_weights, a0, a1)


def _squared_deviation_block_sums(
    x3: Any, mean: Any, segment: int, row_weights: Any, a0: int, a1: int, c0: int, c1: int
) -> Any:
    centred = np.subtract(x3[a0:a1, c0:c1], mean[c0:c1, None])
    return _over_rows(row_dots(centred, None, segment), row_weights, a0, a1)


def _over_rows(per_row: Any, row_weights: Any, a0: int, a1: int) -> Any:
    """float64 ``[rows, channels]`` sums added over the rows, each times its weight if weighted
    (in float64: the weighted sum of the partial sums, with no rounding of its own)."""
    if row_weights is None:
        return per_row.sum(axis=0)
    return (per_row * row_weights[a0:a1, None]).sum(axis=0)


def _gradient_block_sums(
    dy3: Any, x3: Any, mean: Any, compute: Any, segment: int, a0: int, a1: int, c0: int, c1: int
) -> Any:
    gradient = dy3[a0:a1, c0:c1].astype(compute, copy=False)
    centred = np.subtract(x3[a0:a1, c0:c1], mean[c0:c1, None], dtype=compute)
    return np.stack(
        [row_sums(gradient, segment).sum(axis=0), row_dots(gradient, centred, segment).sum(axis=0)]
    )


def row_sums(block: Any, segment: int) -> Any:
    """``Σ`` along the last (contiguous) axis, float64 totals of ``np.add.reduce`` over segments.

    NumPy's own pairwise summation rather than a BLAS product with ones: its
    error does not depend on the BLAS build (NumPy 1.26's OpenBLAS on an
    AVX-512 processor sums 1600 float32 values 8 epsilons off; NumPy's
    pairwise sum stays within one), at about 1.4× the time of that one pass.
    """
    total = None
    for s0, s1 in _segments(block.shape[-1], segment):
        part = np.add.reduce(block[..., s0:s1], axis=-1).astype(np.float64)
        total = part if total is None else total + part
    return total


def row_dots(a: Any, b: Any, segment: int) -> Any:
    """``Σ a·b`` (``Σ a²`` when ``b`` is None) along the last axis, float64 totals of BLAS dots over segments."""
    b = a if b is None else b
    if a.ndim == 3 and a.shape[1] == 1:
        return row_dots(a[:, 0], b[:, 0], segment)[:, None]
    total = None
    for s0, s1 in _segments(a.shape[-1], segment):
        part = _vecdot(a[..., s0:s1], b[..., s0:s1]).astype(np.float64)
        total = part if total is None else total + part
    return total


def _segments(length: int, segment: int) -> list[tuple[int, int]]:
    return [(s0, min(length, s0 + segment)) for s0 in range(0, length, segment)]


def _vecdot(a: Any, b: Any) -> Any:
    """``Σ a·b`` along the last axis (``np.vecdot`` is NumPy 2; einsum's loop before it)."""
    if _HAS_VECDOT:
        return np.vecdot(a, b)
    return np.einsum("...i,...i->...", a, b)


_HAS_VECDOT = hasattr(np, "vecdot")


# ---------------------------------------------------------------------------
# Short runs: partials over rows
# ---------------------------------------------------------------------------


def _product_column_sums(x2: Any, rows_per_partial: int) -> Any:
    """Column sums of ``x2`` by one BLAS product: ``rows_per_partial`` row groups per partial."""
    outer, width = x2.shape
    groups = min(rows_per_partial, outer)
    per_group = outer // groups
    head = groups * per_group
    ones = np.ones(groups, dtype=x2.dtype)
    partials = ones @ x2[:head].reshape(groups, per_group * width)
    columns = partials.reshape(per_group, width).sum(axis=0, dtype=np.float64)
    if head < outer:
        columns += x2[head:].sum(axis=0, dtype=np.float64)
    return columns


def chunked_column_sums(plan: Plan, terms: RowTerms, dtype: Any) -> Any:
    """Column sums (over rows of ``C·S`` values) of ``terms``, float64 (contract, point 3).

    ``terms(r0, r1, scratch)`` gives the flat values of rows ``r0:r1`` (it may
    write them into ``scratch``, a block-sized buffer of its own). Chunks of
    ``blocks_per_chunk`` row blocks are shared among threads; their float64
    column sums are added chunk after chunk, in order.
    """
    blocks = row_blocks(plan)
    step = plan.blocks_per_chunk
    chunks = [blocks[i : i + step] for i in range(0, len(blocks), step)]
    block_size = plan.rows_per_block * plan.width
    work = partial(_chunk_column_sums, terms, plan.width, block_size, plan.rows_per_partial, dtype)
    total = np.zeros(plan.width, dtype=np.float64)
    for chunk_total in _threads.in_shares(work, chunks, plan.threads):
        total += chunk_total
    return total


def _chunk_column_sums(
    terms: RowTerms,
    width: int,
    block_size: int,
    rows_per_partial: int,
    dtype: Any,
    chunks: list[list[tuple[int, int]]],
) -> list[Any]:
    """Each chunk's row blocks added element by element, then that block's float64 column sums."""
    running = np.empty(block_size, dtype=dtype)
    scratch = np.empty(block_size, dtype=dtype)
    sums = []
    for chunk in chunks:
        used = 0
        for r0, r1 in chunk:
            block = terms(r0, r1, scratch[: (r1 - r0) * width])
            if used == 0:
                running[: block.size] = block
            else:
                np.add(running[: block.size], block, out=running[: block.size])
            used = max(used, block.size)
        sums.append(_column_sums(running[:used].reshape(-1, width), rows_per_partial))
    return sums


def _column_sums(block: Any, rows_per_partial: int) -> Any:
    """Column sums of a contiguous ``(rows, width)`` block, float64.

    ``rows_per_partial`` slabs of whole rows are added element by element (one
    ``add.reduce``), the slab sums in float64. Not BLAS: this runs in worker
    threads, and some BLAS builds (NumPy 1.26's OpenBLAS) serialise calls from
    several threads, at a hundred times the cost.
    """
    rows, width = block.shape
    if rows >= 2 * rows_per_partial and rows % rows_per_partial == 0:
        slabs = block.reshape(rows_per_partial, rows // rows_per_partial, width)
        return np.add.reduce(slabs, axis=0).sum(axis=0, dtype=np.float64)
    return block.sum(axis=0, dtype=np.float64)


def _rows_as_they_are(x2: Any, r0: int, r1: int, scratch: Any) -> Any:
    return x2[r0:r1].reshape(-1)


def _weighted(terms: RowTerms, row_weights: Any, width: int, r0: int, r1: int, scratch: Any) -> Any:
    """``w·terms`` of rows ``r0:r1``, written into ``scratch`` (in its dtype): each product
    rounded, as ``tf.nn.weighted_moments`` forms them before it sums. The terms may be x's
    own rows (never written) or already in ``scratch`` (multiplied in place)."""
    values = terms(r0, r1, scratch).reshape(r1 - r0, width)
    return np.multiply(values, row_weights[r0:r1, None], out=scratch.reshape(r1 - r0, width)).reshape(-1)


def centred_squares(x2: Any, mean_tile: Any, r0: int, r1: int, scratch: Any) -> Any:
    """``(x − mean)²`` of rows ``r0:r1``, in ``scratch``'s dtype."""
    centred = np.subtract(x2[r0:r1].reshape(-1), mean_tile[: (r1 - r0) * x2.shape[1]], out=scratch)
    return np.multiply(centred, centred, out=centred)


def _centred_products(
    x2: Any, dy2: Any, mean_tile: Any, compute: Any, r0: int, r1: int, scratch: Any
) -> Any:
    size = (r1 - r0) * x2.shape[1]
    centred = np.subtract(x2[r0:r1].reshape(-1), mean_tile[:size], out=scratch, dtype=compute)
    return np.multiply(centred, dy2[r0:r1].reshape(-1), out=centred)

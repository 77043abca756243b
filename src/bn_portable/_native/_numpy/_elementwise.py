"""The elementwise passes of the NumPy fast paths, block by block, into one output array.

Each pass is the generic kernel's ufuncs on the same operands in the same
order, so it gives the generic kernel's bits; only where it reads and writes
changes (a cache-sized block at a time, straight into the output with
``out=``):

- ``affine`` (the fused kernel): ``d = x − mean`` in float32 (a float16 ``x``
  is widened exactly), ``d·factor``, then ``+ offset`` rounded once to the
  output's dtype; ``fused_factor`` is the generic ``rsqrt(var + ε)·scale``.
- ``scale_shift`` (``tf.nn.batch_normalization``): ``x·inv``, then
  ``+ shift``, in x's dtype (or float32 for a float16 x the Keras layer
  widens, rounded once to y); ``normalization_terms`` are the generic
  ``inv`` and ``shift``.
- ``gradient_input`` (the backward): ``dy·a``, ``(x − mean)·b + c`` and their
  sum, each rounded in the compute dtype and the last once to ``dx``'s dtype.

Long runs walk the plan's channel blocks with ``[C, 1]`` parameter columns;
short runs walk its row blocks with parameters tiled to a block's length, or,
for a small input in wide rows (``Plan.whole_pass``), run the output passes
that need no scratch over every row at once with the parameters broadcast.
Blocks are shared among the plan's threads; each thread has its own scratch.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from ..._lib._compat import array_namespace
from ..._lib._numerics import rsqrt
from .. import _threads
from ._plan import (
    Plan,
    as_rows,
    channel_blocks,
    channel_rows,
    columns,
    grouped,
    row,
    row_blocks,
    runs_whole,
    tile,
)

#: NumPy's array-API namespace, for the generic kernels' small expressions (the
#: bare ``numpy`` module is not one before NumPy 2).
NUMPY_NAMESPACE = array_namespace(np.empty(0))


def fused_factor(variance: Any, scale: Any, epsilon: Any) -> Any:
    """``rsqrt(variance + ε)·scale`` exactly as the generic fused kernel computes it."""
    return rsqrt(variance + epsilon, NUMPY_NAMESPACE) * scale


def normalization_terms(
    mean: Any, variance: Any, offset: Any, scale: Any, variance_epsilon: Any
) -> tuple[Any, Any]:
    """``inv`` and ``shift = offset − mean·inv`` exactly as the generic ``normalize`` computes them."""
    inv = rsqrt(variance + variance_epsilon, NUMPY_NAMESPACE)
    if scale is not None:
        inv = inv * scale
    shift = -mean * inv if offset is None else offset - mean * inv
    return inv, shift


# ---------------------------------------------------------------------------
# y = (x − mean)·factor + offset
# ---------------------------------------------------------------------------


def affine(plan: Plan, x: Any, y: Any, mean: Any, factor: Any, offset: Any) -> None:
    """``y = (x − mean)·factor + offset`` in float32, rounded once to y's dtype."""
    if plan.long_runs:
        x3, y3 = grouped(plan, x, y)
        work = partial(_affine_channel_blocks, x3, y3, mean, factor, offset)
        _threads.in_shares(work, channel_blocks(plan), plan.threads)
        return
    x2, y2 = as_rows(plan, x, y)
    lay_out = row if runs_whole(plan, x2, np.float32) else tile
    affine_rows(plan, x2, y2, *(lay_out(plan, v) for v in (mean, factor, offset)), centred_in_y=False)


def affine_rows(
    plan: Plan,
    x2: Any,
    y2: Any,
    mean_tile: Any,
    factor_tile: Any,
    offset_tile: Any,
    *,
    centred_in_y: bool,
) -> None:
    """The short-run ``affine``; ``centred_in_y``: y already holds ``x − mean`` (float32 training).

    The parameters are tiles (``tile``), or rows (``row``) for a whole pass; a
    tile's first ``C·S`` values are its row.
    """
    if runs_whole(plan, x2, np.float32):
        width = plan.width
        d = y2 if centred_in_y else np.subtract(x2, mean_tile[:width], out=y2)
        np.multiply(d, factor_tile[:width], out=d)
        np.add(d, offset_tile[:width], out=y2)
        return
    work = partial(
        _affine_row_blocks, plan, x2, y2, mean_tile, factor_tile, offset_tile, centred_in_y
    )
    _threads.in_shares(work, row_blocks(plan), plan.threads)


def _affine_channel_blocks(
    x3: Any, y3: Any, mean: Any, factor: Any, offset: Any, blocks: list[tuple[int, int, int, int]]
) -> None:
    in_place = x3.dtype == np.float32  # else d is a float32 temporary
    for a0, a1, c0, c1 in blocks:
        out = y3[a0:a1, c0:c1]
        d = np.subtract(
            x3[a0:a1, c0:c1], mean[c0:c1, None], out=out if in_place else None, dtype=np.float32
        )
        np.multiply(d, factor[c0:c1, None], out=d)
        np.add(d, offset[c0:c1, None], out=out)


def _affine_row_blocks(
    plan: Plan,
    x2: Any,
    y2: Any,
    mean_tile: Any,
    factor_tile: Any,
    offset_tile: Any,
    centred_in_y: bool,
    blocks: list[tuple[int, int]],
) -> None:
    in_place = x2.dtype == np.float32  # else d is float32 scratch, one per thread
    scratch: Any = None if in_place else np.empty(plan.rows_per_block * plan.width, np.float32)
    for r0, r1 in blocks:
        size = (r1 - r0) * plan.width
        out = y2[r0:r1].reshape(-1)
        d = out if in_place else scratch[:size]
        if not (in_place and centred_in_y):
            np.subtract(x2[r0:r1].reshape(-1), mean_tile[:size], out=d, dtype=np.float32)
        np.multiply(d, factor_tile[:size], out=d)
        np.add(d, offset_tile[:size], out=out)


# ---------------------------------------------------------------------------
# y = x·inv + shift
# ---------------------------------------------------------------------------


def scale_shift(plan: Plan, x: Any, y: Any, inv: Any, shift: Any) -> None:
    """``y = x·inv + shift`` in inv's dtype (``tf.nn.batch_normalization``): x's own, or
    float32 for float16 x widened block by block (the Keras layer), rounded once to y."""
    if plan.long_runs or inv.size == 1:
        x3, y3 = grouped(plan, x, y)
        work = partial(_scale_shift_channel_blocks, x3, y3, *columns(inv, shift))
        _threads.in_shares(work, channel_blocks(plan), plan.threads)
        return
    x2, y2 = as_rows(plan, x, y)
    if runs_whole(plan, x2, inv.dtype):
        product = np.multiply(x2, row(plan, inv), out=y2)
        np.add(product, row(plan, shift), out=y2)
        return
    work = partial(_scale_shift_row_blocks, plan, x2, y2, tile(plan, inv), tile(plan, shift))
    _threads.in_shares(work, row_blocks(plan), plan.threads)


def _scale_shift_channel_blocks(
    x3: Any, y3: Any, inv: Any, shift: Any, blocks: list[tuple[int, int, int, int]]
) -> None:
    in_place = x3.dtype == inv.dtype  # else the product is a float32 temporary
    for a0, a1, c0, c1 in blocks:
        out = y3[a0:a1, c0:c1]
        product = np.multiply(
            x3[a0:a1, c0:c1], channel_rows(inv, c0, c1), out=out if in_place else None, dtype=inv.dtype
        )
        np.add(product, channel_rows(shift, c0, c1), out=out)


def _scale_shift_row_blocks(
    plan: Plan, x2: Any, y2: Any, inv_tile: Any, shift_tile: Any, blocks: list[tuple[int, int]]
) -> None:
    width = x2.shape[1]
    in_place = x2.dtype == inv_tile.dtype  # else the product is float32 scratch, one per thread
    scratch: Any = None if in_place else np.empty(plan.rows_per_block * width, inv_tile.dtype)
    for r0, r1 in blocks:
        size = (r1 - r0) * width
        out = y2[r0:r1].reshape(-1)
        product = out if in_place else scratch[:size]
        np.multiply(x2[r0:r1].reshape(-1), inv_tile[:size], out=product, dtype=inv_tile.dtype)
        np.add(product, shift_tile[:size], out=out)


# ---------------------------------------------------------------------------
# dx = dy·a + ((x − mean)·b + c)
# ---------------------------------------------------------------------------


def gradient_input(plan: Plan, dy: Any, x: Any, dx: Any, mean: Any, a: Any, b: Any, c: Any) -> None:
    """``dx = dy·a + ((x − mean)·b + c)`` (``dy·a`` alone when ``b`` is None), in a's dtype."""
    if plan.long_runs:
        x3, dy3, dx3 = grouped(plan, x, dy, dx)
        work = partial(_gradient_channel_blocks, dy3, x3, dx3, *columns(mean, a, b, c))
        _threads.in_shares(work, channel_blocks(plan), plan.threads)
        return
    x2, dy2, dx2 = as_rows(plan, x, dy, dx)
    mean_tile, a_tile, b_tile, c_tile = (
        None if v is None else tile(plan, v) for v in (mean, a, b, c)
    )
    work = partial(
        _gradient_row_blocks, plan, dy2, x2, dx2, a.dtype, mean_tile, a_tile, b_tile, c_tile
    )
    _threads.in_shares(work, row_blocks(plan), plan.threads)


def _gradient_channel_blocks(
    dy3: Any,
    x3: Any,
    dx3: Any,
    mean: Any,
    a: Any,
    b: Any,
    c: Any,
    blocks: list[tuple[int, int, int, int]],
) -> None:
    compute = a.dtype
    for a0, a1, c0, c1 in blocks:
        out = dx3[a0:a1, c0:c1]
        if b is None:
            np.multiply(dy3[a0:a1, c0:c1], channel_rows(a, c0, c1), out=out)
            continue
        t = np.multiply(dy3[a0:a1, c0:c1], channel_rows(a, c0, c1), dtype=compute)
        d = np.subtract(x3[a0:a1, c0:c1], channel_rows(mean, c0, c1), dtype=compute)
        np.multiply(d, channel_rows(b, c0, c1), out=d)
        np.add(d, channel_rows(c, c0, c1), out=d)
        np.add(t, d, out=out)


def _gradient_row_blocks(
    plan: Plan,
    dy2: Any,
    x2: Any,
    dx2: Any,
    compute: Any,
    mean_tile: Any,
    a_tile: Any,
    b_tile: Any,
    c_tile: Any,
    blocks: list[tuple[int, int]],
) -> None:
    width = plan.width
    t_buffer = np.empty(plan.rows_per_block * width, dtype=compute)
    d_buffer = np.empty(plan.rows_per_block * width, dtype=compute)
    for r0, r1 in blocks:
        size = (r1 - r0) * width
        out = dx2[r0:r1].reshape(-1)
        if b_tile is None:
            np.multiply(dy2[r0:r1].reshape(-1), a_tile[:size], out=out)
            continue
        t = np.multiply(dy2[r0:r1].reshape(-1), a_tile[:size], out=t_buffer[:size])
        d = np.subtract(x2[r0:r1].reshape(-1), mean_tile[:size], out=d_buffer[:size], dtype=compute)
        np.multiply(d, b_tile[:size], out=d)
        np.add(d, c_tile[:size], out=d)
        np.add(t, d, out=out)

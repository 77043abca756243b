"""NumPy fast paths: cache-blocked passes, one output buffer, BLAS reductions, threads.

The generic kernels spell TensorFlow's formulas as whole-array expressions:
every step allocates a temporary as large as the input and walks it through
memory again. Here each kernel walks the input in blocks that fit in cache,
does every elementwise step of a block while it is there, writes straight
into the one output array (``out=``) and sums with BLAS matrix-vector
products. Nothing else as large as the input is allocated: the peak extra
memory is the output plus a few block-sized buffers (at most about a fifth of
the input; ``tests/test_fast_paths.py`` checks ≤ 1.25× the input in all).

Why the results are TensorFlow's
--------------------------------
**Elementwise steps are the same operations in the same order**, so, given
the same statistics, they give the same bits as the generic kernels:

- ``fused_training_core`` / ``fused_inference``: ``d = x − mean`` (a float16
  ``x`` is widened to float32 exactly), ``d·factor`` with
  ``factor = rsqrt(var + ε)·scale`` computed as the generic kernel does, then
  ``+ offset``; each step rounds to float32 and the last one is rounded once
  to ``x``'s dtype, as TensorFlow's fused kernel does. ``fused_inference``
  is therefore bit-identical to the generic kernel.
- ``normalize`` (``tf.nn.batch_normalization``): ``inv`` and
  ``shift = offset − mean·inv`` are the generic kernel's own (tiny)
  expressions; then ``x·inv`` and ``+ shift`` in ``x``'s dtype, the same two
  ufuncs on the same operands: bit-identical.
- ``gradient_input`` (the backward's elementwise pass): ``dy·a``, then
  ``((x − mean)·b + c)`` and their sum, each rounded in the compute dtype and
  the last once to ``x``'s dtype: bit-identical.

**Sums are the only difference**, and only in the order of the additions.
TensorFlow's operation order is kept: mean = float32 sum · float32(1/n) for the
fused kernel (sum / n for ``tf.nn.moments``); variance = Σ(x − mean)² from
that rounded float32 mean (two-pass, never E[x²] − E[x]²), times 1/n; the
backward's ``gradient_sums`` are Σ dy and Σ dy·(x − mean). Every
sum is formed by BLAS products, NumPy pairwise sums or elementwise running sums over short runs
(at most ``_RUN`` rows, or ``_SEGMENT`` contiguous values, accumulated in
float32 per output), and the partial sums are added in float64 and rounded
once to float32. That is at least as accurate as the generic NumPy
reduction, which is pairwise along a contiguous last axis but a plain running
float32 sum across outer axes (an NHWC batch of 10⁵ rows loses 100+ ulps
there): the fast statistics stay within about one ulp of the exactly rounded
values, so ``y`` agrees with the generic kernel to a few ulps of its scale,
or to the generic kernel's own error where that is larger (the tests check
both against a float64 reference).

Layouts
-------
The input is viewed as ``(A, C, S)``: ``A`` everything before the channel
axis, ``C`` channels, ``S`` everything after it (NCHW: ``A = N``,
``S = H·W``; NHWC: ``A = N·H·W``, ``S = 1``).

- Long runs (``S ≥ _LONG_RUN``, NCHW): groups of whole channels of about
  ``_CHANNEL_BLOCK`` values. A channel's statistics need no other channel,
  so each group is read from memory once: its sum, its centred squares
  (written into the output, which serves as scratch) and its normalization
  all happen while it is in cache.
- Short runs (NHWC): blocks of whole rows of about ``_ROW_BLOCK`` values, and
  the per-channel parameters tiled once to a block's length so that every
  ufunc runs over one contiguous stretch. The mean needs the whole batch
  before any centring, so there are three passes: one BLAS product for the
  sums, a centred-squares pass (x − mean written into the output), and the
  scaling pass over the output.

Threads
-------
NumPy releases the GIL inside ufuncs, so the inference, ``normalize``,
moments and backward kernels share their blocks among threads (``_threads``;
``BN_PORTABLE_NUM_THREADS``) on inputs of ``_PARALLEL`` values or more. The
blocking, and so every result, is the same for any number of threads (the
benchmark's ``NumPy fast, 1 thread`` column shows what the threads gain). The
training kernel stays on the calling thread: on 2 CPU cores, sharing its
blocks did not make it faster (its BLAS sums, called from two threads at once,
contend).

Limits: NumPy has no fast float16 conversion here (about 1.2 ns per value
each way, scalar code), so float16 input is dominated by widening and
narrowing; the blocked kernel converts each value in at most three times
(NHWC training) and out once, and only pays on inputs of ``_SMALL_HALF``
values or more (then mainly in memory: no float32 copy of the input). Inputs
under ``_SMALL`` values (``_SMALL_HALF`` for float16), non-contiguous or empty
input, bfloat16 and parameters that vary along more than one axis return
``NotImplemented`` and take the generic path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._lib._compat import array_namespace
from . import _threads, fast_paths_enabled

#: NumPy's array-API namespace, for the generic helpers these kernels reuse
#: (the bare ``numpy`` module is not one before NumPy 2).
_XP = array_namespace(np.empty(0))

#: The fast-path switch, which the dispatcher asks of every fast-path module.
enabled = fast_paths_enabled

#: Values per block of whole rows (NHWC): the block, its squares and the
#: tiles stay in L2 cache.
_ROW_BLOCK = 1 << 15
#: Values per channel group (NCHW): one group is read from memory once.
_CHANNEL_BLOCK = 1 << 17
#: Smallest block, whatever the input size (below it, call overhead dominates).
_MIN_BLOCK = 1 << 12
#: Inputs smaller than this take the generic path: a handful of whole-array
#: ufuncs is quicker there than the blocked loop's per-block calls.
_SMALL = 1 << 16
#: The same for float16: NumPy's float16 casts are slow per call, so blocked
#: conversion only pays on large inputs.
_SMALL_HALF = 1 << 20
#: A run of at least this many contiguous values per channel counts as long.
_LONG_RUN = 128
#: Rows summed in float32 (a BLAS product or an ``add.reduce``) before the float64 total.
_RUN = 64
#: Row blocks added elementwise in float32 before their float64 column totals.
_CHUNK = 16
#: Inputs of at least this many values are shared among threads (below it,
#: handing work to another thread costs more than it saves).
_PARALLEL = 1 << 18
#: Longest contiguous stretch one dot product sums in float32.
_SEGMENT = 4096

_FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
_MOMENT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))


# ---------------------------------------------------------------------------
# Overridden kernels (same names and arguments as the generic ones)
# ---------------------------------------------------------------------------


def fused_training_core(
    x: Any, scale: Any, offset: Any, epsilon: Any, channel: Any, xp: Any
) -> Any:
    """Blocked fused training: ``y``, batch mean, biased variance, count."""
    if not _fusable(x, scale, offset):
        return NotImplemented
    view = _ChannelView(x.shape, channel, x.dtype.itemsize)
    if view.count < 2:
        return NotImplemented  # the empty and n = 1 corner cases stay generic
    n = view.count
    y = np.empty(x.shape, dtype=x.dtype)
    batch_mean, biased_variance = view.train(x, y, scale, offset, epsilon, np.float32(1.0 / n))
    return y, batch_mean, biased_variance, n


def fused_inference(
    x: Any, scale: Any, offset: Any, mean: Any, variance: Any, epsilon: Any, channel: Any, xp: Any
) -> Any:
    """Blocked fused inference: ``(x − mean)·(rsqrt(var + ε)·scale) + offset``."""
    if not _fusable(x, scale, offset, mean, variance):
        return NotImplemented
    view = _ChannelView(x.shape, channel, x.dtype.itemsize, threaded=True)
    factor = _fused_factor(variance, scale, epsilon)
    y = np.empty(x.shape, dtype=x.dtype)
    view.affine(x, y, mean, factor, offset)
    return y


def batch_moments(x: Any, axes: Any, xp: Any) -> Any:
    """Two-pass mean and biased variance over every axis but one (keepdims)."""
    if not _plain(x, _MOMENT_DTYPES):
        return NotImplemented
    kept = [axis for axis in range(x.ndim) if axis not in axes]
    if len(kept) > 1:
        return NotImplemented
    # Every axis reduced: one channel of all the values.
    channel, shape = (kept[0], tuple(x.shape)) if kept else (0, (1, x.size))
    view = _ChannelView(shape, channel, x.dtype.itemsize, threaded=True)
    data = x.reshape(shape)
    compute = np.dtype(np.float32) if x.dtype == np.float16 else x.dtype
    n = compute.type(view.count)
    # tf.nn.moments (xp.mean): the sum divided by n, in the compute dtype.
    mean = view.channel_sums(data).astype(compute) / n
    variance = view.squared_deviation_sums(data, mean).astype(compute) / n
    keep_shape = tuple(1 if axis in axes else x.shape[axis] for axis in range(x.ndim))
    return mean.reshape(keep_shape), variance.reshape(keep_shape)


def normalize(
    x: Any, mean: Any, variance: Any, offset: Any, scale: Any, variance_epsilon: Any, xp: Any
) -> Any:
    """``x·inv + shift`` with the generic kernel's ``inv`` and ``shift``, blocked."""
    if not _plain(x, _MOMENT_DTYPES):
        return NotImplemented
    parameters = [value for value in (mean, variance, offset, scale) if value is not None]
    if not all(isinstance(value, np.ndarray) for value in parameters):
        return NotImplemented
    axis = _single_varying_axis(x.shape, [value.shape for value in parameters])
    if axis is None:
        return NotImplemented
    from .._normalize import rsqrt  # the generic kernel's own small expressions

    inv = rsqrt(variance + variance_epsilon, _XP)
    if scale is not None:
        inv = inv * scale
    shift = -mean * inv if offset is None else offset - mean * inv
    inv, shift = (_per_axis(np.asarray(v, dtype=x.dtype), x.ndim, axis) for v in (inv, shift))
    shape = tuple(x.shape) if axis >= 0 else (1, *x.shape)
    view = _ChannelView(shape, max(axis, 0) if axis >= 0 else 0, x.dtype.itemsize, threaded=True)
    y = np.empty(x.shape, dtype=x.dtype)
    view.scale_shift(x.reshape(shape), y.reshape(shape), inv, shift)
    return y


def gradient_sums(dy: Any, x: Any, mean: Any, channel: Any, xp: Any) -> Any:
    """``(Σ dy, Σ dy·(x − mean))`` per channel, blocked: float32 partial sums, float64 totals."""
    if not _plain(x, _MOMENT_DTYPES) or not _same_layout(dy, x):
        return NotImplemented
    if not (type(mean) is np.ndarray and mean.ndim == 1 and mean.dtype == _compute(x.dtype)):
        return NotImplemented
    view = _ChannelView(x.shape, channel, x.dtype.itemsize, threaded=True)
    sum_dy, sum_dy_centred = view.gradient_sums(dy, x, mean)
    return sum_dy.astype(mean.dtype), sum_dy_centred.astype(mean.dtype)


def gradient_input(dy: Any, x: Any, mean: Any, a: Any, b: Any, c: Any, share: Any, xp: Any) -> Any:
    """``dx = dy·a + ((x − mean)·b + c)``, the generic kernel's ufuncs in its order, blocked."""
    if share is not None or not _plain(x, _MOMENT_DTYPES) or not _same_layout(dy, x):
        return NotImplemented
    parameters = [value for value in (mean, a, b, c) if value is not None]
    if not all(type(v) is np.ndarray and v.dtype == a.dtype for v in parameters):
        return NotImplemented
    if a.dtype != _compute(x.dtype) or (b is None) != (c is None):
        return NotImplemented
    axis = _single_varying_axis(x.shape, [value.shape for value in parameters])
    if axis is None:
        return NotImplemented
    flat = [None if v is None else _per_axis(v, x.ndim, axis) for v in (mean, a, b, c)]
    shape = tuple(x.shape) if axis >= 0 else (1, *x.shape)
    view = _ChannelView(shape, max(axis, 0), x.dtype.itemsize, threaded=True)
    dx = np.empty(x.shape, dtype=x.dtype)
    view.gradient_input(dy.reshape(shape), x.reshape(shape), dx.reshape(shape), *flat)
    return dx


# ---------------------------------------------------------------------------
# Eligibility
# ---------------------------------------------------------------------------


def _plain(x: Any, dtypes: Any) -> bool:
    """A C-contiguous, non-empty NumPy array of one of ``dtypes``, large enough to gain."""
    return (
        type(x) is np.ndarray
        and x.dtype in dtypes
        and x.flags.c_contiguous
        and x.ndim >= 1
        and x.size > 0
        and x.size >= (_SMALL_HALF if x.dtype == np.float16 else _SMALL)
    )


def _same_layout(other: Any, x: Any) -> bool:
    """``other`` is a C-contiguous NumPy array of ``x``'s dtype and shape."""
    return (
        type(other) is np.ndarray
        and other.dtype == x.dtype
        and other.shape == x.shape
        and other.flags.c_contiguous
    )


def _fusable(x: Any, *parameters: Any) -> bool:
    return _plain(x, _FUSED_DTYPES) and all(
        type(p) is np.ndarray and p.dtype == np.float32 and p.ndim == 1 for p in parameters
    )


def _single_varying_axis(shape: Any, parameter_shapes: Any) -> Any:
    """The one axis the parameters vary along; -1 if none does; None if several or broadcast grows x."""
    rank = len(shape)
    varying = set()
    for pshape in parameter_shapes:
        if len(pshape) > rank:
            return None
        padded = (1,) * (rank - len(pshape)) + tuple(pshape)
        for axis, (size, psize) in enumerate(zip(shape, padded)):
            if psize == 1:
                continue
            if psize != size:
                return None
            varying.add(axis)
    if len(varying) > 1:
        return None
    return varying.pop() if varying else -1


def _per_axis(value: Any, rank: Any, axis: Any) -> Any:
    """A parameter broadcastable along ``axis`` as a flat ``[C]`` vector."""
    return value.reshape(-1) if axis >= 0 else value.reshape(1)


def _fused_factor(variance: Any, scale: Any, epsilon: Any) -> Any:
    """``rsqrt(variance + ε)·scale`` exactly as the generic fused kernel computes it."""
    from .._normalize import rsqrt

    return rsqrt(variance + epsilon, _XP) * scale


# ---------------------------------------------------------------------------
# The blocked kernels
# ---------------------------------------------------------------------------


class _ChannelView:
    """``x`` as ``(A, C, S)`` with the channel in the middle, and how to block it."""

    def __init__(
        self, shape: Any, channel: Any, itemsize: Any = 4, *, threaded: Any = False
    ) -> None:
        shape = tuple(int(s) for s in shape)
        self.shape = shape
        self.outer = math.prod(shape[:channel])
        self.channels = shape[channel]
        self.inner = math.prod(shape[channel + 1 :])
        self.count = self.outer * self.inner
        self.long = self.inner >= _LONG_RUN
        size = self.count * self.channels
        self.threads = _threads.thread_count() if threaded and size >= _PARALLEL else 1
        # Small inputs get smaller blocks, so that the block-sized buffers
        # stay a small fraction of the input (peak memory ~ output + 1/5).
        # The blocking never depends on the thread count: it decides the
        # order of the additions, and so the bits of every sum.
        if self.long and itemsize == 4:
            # float32 channel groups are normalized in place in the output:
            # no block-sized buffer, so the group size costs no memory.
            self.block = _CHANNEL_BLOCK
        elif self.long:
            # float16 groups are widened into a float32 copy (1/8 of the input).
            self.block = min(_CHANNEL_BLOCK, max(_MIN_BLOCK, size // 16))
        else:
            # Three block-sized float32 tiles and two block-sized float32
            # buffers (per thread): together at most about a fifth of the
            # input on one thread.
            self.block = min(_ROW_BLOCK, max(_MIN_BLOCK, size * itemsize // 100))

    def _grouped(self, *arrays: Any) -> Any:
        """Each array viewed as ``(A, C, S)``."""
        return [a.reshape(self.outer, self.channels, self.inner) for a in arrays]

    def _rows(self, *arrays: Any) -> Any:
        """Each array viewed as ``A`` rows of ``C·S`` values."""
        return [a.reshape(self.outer, self.channels * self.inner) for a in arrays]

    def _in_shares(self, work: Any, items: Any) -> Any:
        return _threads.in_shares(work, items, self.threads)

    # -- reductions -------------------------------------------------------

    def channel_sums(self, x: Any) -> Any:
        """Σx per channel, float64 totals of float32 BLAS partial sums."""
        if self.long:
            return self._long_sums(*self._grouped(x))
        return self._short_sums(*self._rows(x))

    def squared_deviation_sums(self, x: Any, mean: Any) -> Any:
        """Σ(x − mean)² per channel (moments only: the centred block is scratch)."""
        mean32 = np.asarray(mean, dtype=_compute(x.dtype)).reshape(-1)
        if self.long:
            (x3,) = self._grouped(x)

            def block_sums(a0: Any, a1: Any, c0: Any, c1: Any) -> Any:
                d = np.subtract(x3[a0:a1, c0:c1], mean32[c0:c1, None])
                return _row_dots(d).sum(axis=0)

            return self._long_block_totals(block_sums)
        (x2,) = self._rows(x)
        rows = self._rows_per_block()
        mean_tile = self._tile(mean32, rows)

        def squares(r0: Any, r1: Any, scratch: Any) -> Any:
            d = np.subtract(x2[r0:r1].reshape(-1), mean_tile[: (r1 - r0) * x2.shape[1]], out=scratch)
            return np.multiply(d, d, out=d)

        totals = self._chunked_column_sums(squares, mean32.dtype)
        return totals.reshape(self.channels, self.inner).sum(axis=1)

    def _long_sums(self, x3: Any) -> Any:
        if x3.dtype != np.float16:
            return _row_sums(x3).sum(axis=0)  # whole, one pass

        def block_sums(a0: Any, a1: Any, c0: Any, c1: Any) -> Any:
            return _row_sums(x3[a0:a1, c0:c1].astype(np.float32)).sum(axis=0)

        return self._long_block_totals(block_sums)

    def _long_block_totals(self, block_sums: Any) -> Any:
        """Per-channel float64 totals of ``block_sums`` over ``_long_blocks``, in block order.

        ``block_sums(a0, a1, c0, c1)`` returns ``[..., c1 − c0]`` partial sums
        (several kinds of sum may be stacked on the leading axes).
        """
        blocks = list(self._long_blocks())
        partials = self._in_shares(lambda share: [block_sums(*b) for b in share], blocks)
        total = np.zeros((*np.shape(partials[0])[:-1], self.channels), dtype=np.float64)
        for (_, _, c0, c1), partial in zip(blocks, partials):
            total[..., c0:c1] += partial
        return total

    def _short_sums(self, x2: Any) -> Any:
        width = x2.shape[1]
        if x2.dtype != np.float16:
            # One BLAS product over the whole input: _RUN groups of rows,
            # each output value a float32 sum of _RUN terms.
            groups = min(_RUN, self.outer)
            per_group = self.outer // groups
            head = groups * per_group
            partial = np.ones(groups, dtype=x2.dtype) @ x2[:head].reshape(groups, per_group * width)
            columns = partial.reshape(per_group, width).sum(axis=0, dtype=np.float64)
            if head < self.outer:
                columns += x2[head:].sum(axis=0, dtype=np.float64)
        else:
            columns = self._chunked_column_sums(
                lambda r0, r1, scratch: x2[r0:r1].reshape(-1), np.dtype(np.float32)
            )
        return columns.reshape(self.channels, self.inner).sum(axis=1)

    def _chunked_column_sums(self, values: Any, dtype: Any) -> Any:
        """Column sums (over rows of ``C·S`` values) of ``values(r0, r1, scratch)``, float64.

        ``values`` gives the flat values of rows ``r0:r1`` (it may write them
        into ``scratch``, a block-sized buffer of its own). The row blocks are
        taken ``_CHUNK`` at a time: within a chunk they are added elementwise
        into one running block in ``dtype`` (one in-cache ufunc per block),
        whose column sums (``_column_sums``) are added in float64, chunk after
        chunk in order. Chunks are shared among threads; the grouping depends
        on the shape alone.
        """
        width = self.channels * self.inner
        blocks = self._row_blocks()
        chunks = [blocks[i : i + _CHUNK] for i in range(0, len(blocks), _CHUNK)]
        block_size = (blocks[0][1] - blocks[0][0]) * width

        def work(share: Any) -> Any:
            running = np.empty(block_size, dtype=dtype)
            scratch = np.empty(block_size, dtype=dtype)
            sums = []
            for chunk in share:
                used = 0
                for r0, r1 in chunk:
                    block = values(r0, r1, scratch[: (r1 - r0) * width])
                    if used == 0:
                        running[: block.size] = block
                    else:
                        np.add(running[: block.size], block, out=running[: block.size])
                    used = max(used, block.size)
                sums.append(_column_sums(running[:used].reshape(-1, width)))
            return sums

        total = np.zeros(width, dtype=np.float64)
        for partial in self._in_shares(work, chunks):
            total += partial
        return total

    # -- fused training ---------------------------------------------------

    def train(
        self, x: Any, y: Any, scale: Any, offset: Any, epsilon: Any, inverse_count: Any
    ) -> Any:
        """Statistics and normalization into ``y``: batch mean, biased variance."""
        if self.long:
            return self._train_long(x, y, scale, offset, epsilon, inverse_count)
        return self._train_rows(x, y, scale, offset, epsilon, inverse_count)

    def _train_long(
        self, x: Any, y: Any, scale: Any, offset: Any, epsilon: Any, inverse_count: Any
    ) -> Any:
        """Channel groups one at a time: each is read from memory once.

        A group's sum, its centred squares and its output are all computed
        while the group is in cache (a channel's statistics need no other
        channel), so ``x`` streams through memory once and ``y`` once. The
        groups are shared among threads.
        """
        x3, y3 = self._grouped(x, y)
        mean = np.empty(self.channels, dtype=np.float32)
        variance = np.empty(self.channels, dtype=np.float32)

        def work(groups: Any) -> None:
            for c0, c1, a_blocks in groups:
                group_mean, group_variance = _train_group(
                    x3, y3, c0, c1, a_blocks, scale, offset, epsilon, inverse_count
                )
                mean[c0:c1] = group_mean
                variance[c0:c1] = group_variance

        self._in_shares(work, list(self._channel_groups()))
        return mean, variance

    def _train_rows(
        self, x: Any, y: Any, scale: Any, offset: Any, epsilon: Any, inverse_count: Any
    ) -> Any:
        """Whole rows: a mean pass, a centred-squares pass, then the output pass."""
        mean = self.channel_sums(x).astype(np.float32) * inverse_count
        width = self.channels * self.inner
        x2, y2 = self._rows(x, y)
        rows = self._rows_per_block()
        in_place = x.dtype == np.float32
        mean_tile = self._tile(mean, rows)

        def squares(r0: Any, r1: Any, scratch: Any) -> Any:
            # float32 input: x − mean goes into y, which the output pass reuses.
            size = (r1 - r0) * width
            source = x2[r0:r1].reshape(-1)
            if in_place:
                d = np.subtract(source, mean_tile[:size], out=y2[r0:r1].reshape(-1))
                return np.multiply(d, d, out=scratch)
            d = np.subtract(source, mean_tile[:size], out=scratch, dtype=np.float32)
            return np.multiply(d, d, out=d)

        total = self._chunked_column_sums(squares, np.dtype(np.float32))
        variance = total.reshape(self.channels, self.inner).sum(axis=1).astype(np.float32)
        variance *= inverse_count
        factor_tile = self._tile(_fused_factor(variance, scale, epsilon), rows)
        offset_tile = self._tile(offset, rows)

        def output(blocks: Any) -> None:
            centred: Any = None if in_place else np.empty(rows * width, dtype=np.float32)
            for r0, r1 in blocks:
                size = (r1 - r0) * width
                out = y2[r0:r1].reshape(-1)
                if in_place:
                    d = out
                else:  # float16: x − mean again (float16 blocks are not kept)
                    d = centred[:size]
                    np.subtract(x2[r0:r1].reshape(-1), mean_tile[:size], out=d, dtype=np.float32)
                np.multiply(d, factor_tile[:size], out=d)
                np.add(d, offset_tile[:size], out=out)

        self._in_shares(output, self._row_blocks())
        return mean, variance

    # -- elementwise ------------------------------------------------------

    def affine(self, x: Any, y: Any, mean: Any, factor: Any, offset: Any) -> None:
        """``y = (x − mean)·factor + offset`` in float32, rounded once to y's dtype."""
        in_place = x.dtype == np.float32
        if self.long:
            x3, y3 = self._grouped(x, y)

            def work(blocks: Any) -> None:
                for a0, a1, c0, c1 in blocks:
                    out = y3[a0:a1, c0:c1]
                    d = np.subtract(
                        x3[a0:a1, c0:c1],
                        mean[c0:c1, None],
                        out=out if in_place else None,
                        dtype=np.float32,
                    )
                    np.multiply(d, factor[c0:c1, None], out=d)
                    np.add(d, offset[c0:c1, None], out=out)

            self._in_shares(work, list(self._long_blocks()))
            return
        width = self.channels * self.inner
        x2, y2 = self._rows(x, y)
        rows = self._rows_per_block()
        tiles = [self._tile(v, rows) for v in (mean, factor, offset)]

        def work_rows(blocks: Any) -> None:
            scratch: Any = None if in_place else np.empty(rows * width, dtype=np.float32)
            for r0, r1 in blocks:
                size = (r1 - r0) * width
                out = y2[r0:r1].reshape(-1)
                d = out if in_place else scratch[:size]
                np.subtract(x2[r0:r1].reshape(-1), tiles[0][:size], out=d, dtype=np.float32)
                np.multiply(d, tiles[1][:size], out=d)
                np.add(d, tiles[2][:size], out=out)

        self._in_shares(work_rows, self._row_blocks())

    def scale_shift(self, x: Any, y: Any, inv: Any, shift: Any) -> None:
        """``y = x·inv + shift`` in x's dtype (``tf.nn.batch_normalization``)."""
        if self.long or inv.size == 1:
            x3, y3 = self._grouped(x, y)
            inv_b, shift_b = _columns(inv, shift)

            def work(blocks: Any) -> None:
                for a0, a1, c0, c1 in blocks:
                    out = y3[a0:a1, c0:c1]
                    np.multiply(x3[a0:a1, c0:c1], _channel_rows(inv_b, c0, c1), out=out)
                    np.add(out, _channel_rows(shift_b, c0, c1), out=out)

            self._in_shares(work, list(self._long_blocks()))
            return
        width = self.channels * self.inner
        x2, y2 = self._rows(x, y)
        rows = self._rows_per_block()
        inv_tile, shift_tile = (self._tile(v, rows) for v in (inv, shift))

        def work_rows(blocks: Any) -> None:
            for r0, r1 in blocks:
                size = (r1 - r0) * width
                out = y2[r0:r1].reshape(-1)
                np.multiply(x2[r0:r1].reshape(-1), inv_tile[:size], out=out)
                np.add(out, shift_tile[:size], out=out)

        self._in_shares(work_rows, self._row_blocks())

    # -- backward ---------------------------------------------------------

    def gradient_sums(self, dy: Any, x: Any, mean: Any) -> Any:
        """``Σ dy`` and ``Σ dy·(x − mean)`` per channel, as float64."""
        compute = _compute(x.dtype)
        if self.long:
            x3, dy3 = self._grouped(x, dy)

            def block_sums(a0: Any, a1: Any, c0: Any, c1: Any) -> Any:
                g = dy3[a0:a1, c0:c1].astype(compute, copy=False)
                d = np.subtract(x3[a0:a1, c0:c1], mean[c0:c1, None], dtype=compute)
                return np.stack([_row_sums(g).sum(axis=0), _row_dots(g, d).sum(axis=0)])

            totals = self._long_block_totals(block_sums)
            return totals[0], totals[1]
        width = self.channels * self.inner
        x2, dy2 = self._rows(x, dy)
        mean_tile = self._tile(mean, self._rows_per_block())

        def products(r0: Any, r1: Any, scratch: Any) -> Any:
            size = (r1 - r0) * width
            d = np.subtract(x2[r0:r1].reshape(-1), mean_tile[:size], out=scratch, dtype=compute)
            return np.multiply(d, dy2[r0:r1].reshape(-1), out=d)

        sum_dy_centred = self._chunked_column_sums(products, compute)
        sum_dy_centred = sum_dy_centred.reshape(self.channels, self.inner).sum(axis=1)
        return self.channel_sums(dy), sum_dy_centred

    def gradient_input(self, dy: Any, x: Any, dx: Any, mean: Any, a: Any, b: Any, c: Any) -> None:
        """``dx = dy·a + ((x − mean)·b + c)`` (``dy·a`` alone when ``b`` is None).

        Each product and sum rounds in the compute dtype, the last one once to
        ``dx``'s dtype: the generic kernel's operations in its order.
        """
        compute = a.dtype
        if self.long:
            x3, dy3, dx3 = self._grouped(x, dy, dx)
            a_b, b_b, c_b, mean_b = _columns(a, b, c, mean)

            def work(blocks: Any) -> None:
                for a0, a1, c0, c1 in blocks:
                    out = dx3[a0:a1, c0:c1]
                    if b_b is None:
                        np.multiply(dy3[a0:a1, c0:c1], _channel_rows(a_b, c0, c1), out=out)
                        continue
                    t = np.multiply(dy3[a0:a1, c0:c1], _channel_rows(a_b, c0, c1), dtype=compute)
                    d = np.subtract(x3[a0:a1, c0:c1], _channel_rows(mean_b, c0, c1), dtype=compute)
                    np.multiply(d, _channel_rows(b_b, c0, c1), out=d)
                    np.add(d, _channel_rows(c_b, c0, c1), out=d)
                    np.add(t, d, out=out)

            self._in_shares(work, list(self._long_blocks()))
            return
        width = self.channels * self.inner
        x2, dy2, dx2 = self._rows(x, dy, dx)
        rows = self._rows_per_block()
        a_tile: Any
        b_tile: Any
        c_tile: Any
        mean_tile: Any
        a_tile, b_tile, c_tile, mean_tile = (
            None if v is None else self._tile(v, rows) for v in (a, b, c, mean)
        )

        def work_rows(blocks: Any) -> None:
            t_buffer = np.empty(rows * width, dtype=compute)
            d_buffer = np.empty(rows * width, dtype=compute)
            for r0, r1 in blocks:
                size = (r1 - r0) * width
                out = dx2[r0:r1].reshape(-1)
                if b_tile is None:
                    np.multiply(dy2[r0:r1].reshape(-1), a_tile[:size], out=out)
                    continue
                t = np.multiply(dy2[r0:r1].reshape(-1), a_tile[:size], out=t_buffer[:size])
                d = np.subtract(
                    x2[r0:r1].reshape(-1), mean_tile[:size], out=d_buffer[:size], dtype=compute
                )
                np.multiply(d, b_tile[:size], out=d)
                np.add(d, c_tile[:size], out=d)
                np.add(t, d, out=out)

        self._in_shares(work_rows, self._row_blocks())

    # -- blocking ---------------------------------------------------------

    def _rows_per_block(self) -> Any:
        """Rows of ``C·S`` values per block: a multiple of ``_RUN`` when there are many."""
        width = self.channels * self.inner
        rows = max(1, self.block // width)
        if rows >= 2 * _RUN:
            rows -= rows % _RUN
        return min(rows, self.outer)

    def _row_blocks(self) -> Any:
        """(r0, r1) blocks of whole rows, ``_rows_per_block`` rows each (the last may be short)."""
        rows = self._rows_per_block()
        return [(r0, min(self.outer, r0 + rows)) for r0 in range(0, self.outer, rows)]

    def _tile(self, per_channel: Any, rows: Any) -> Any:
        """A ``[C]`` vector laid out as ``rows`` rows of ``C·S`` values."""
        row = (
            np.repeat(np.asarray(per_channel).reshape(-1), self.inner)
            if self.inner > 1
            else per_channel
        )
        return np.tile(row, rows)

    def _long_blocks(self) -> Any:
        """(a0, a1, c0, c1) blocks of at most about ``self.block`` values."""
        per_channel = self.outer * self.inner
        if per_channel <= self.block:
            step = max(1, self.block // per_channel)
            for c0 in range(0, self.channels, step):
                yield 0, self.outer, c0, min(self.channels, c0 + step)
            return
        rows = max(1, self.block // self.inner)
        for c0 in range(self.channels):
            for a0 in range(0, self.outer, rows):
                yield a0, min(self.outer, a0 + rows), c0, c0 + 1

    def _channel_groups(self) -> Any:
        """Channel groups with their row blocks; a group's blocks cover every row."""
        per_channel = self.outer * self.inner
        if per_channel <= self.block:
            step = max(1, self.block // per_channel)
            for c0 in range(0, self.channels, step):
                yield c0, min(self.channels, c0 + step), [(0, self.outer)]
            return
        rows = max(1, self.block // self.inner)
        a_blocks = [(a0, min(self.outer, a0 + rows)) for a0 in range(0, self.outer, rows)]
        for c0 in range(self.channels):
            yield c0, c0 + 1, a_blocks


def _train_group(
    x3: Any,
    y3: Any,
    c0: Any,
    c1: Any,
    a_blocks: Any,
    scale: Any,
    offset: Any,
    epsilon: Any,
    inverse_count: Any,
) -> Any:
    """One channel group of ``_train_long``: its mean and variance; its output into ``y3``."""
    in_place = x3.dtype == np.float32
    single = len(a_blocks) == 1
    kept: Any = None
    total = np.zeros(c1 - c0, dtype=np.float64)
    for a0, a1 in a_blocks:
        block = x3[a0:a1, c0:c1]
        if not in_place:
            block = block.astype(np.float32)  # exact; reused for x − mean
            kept = block
        total += _row_sums(block).sum(axis=0)
    group_mean = total.astype(np.float32) * inverse_count
    mean_b = group_mean[:, None]
    squares = np.zeros(c1 - c0, dtype=np.float64)
    for a0, a1 in a_blocks:
        if in_place:  # y is the scratch for x − mean
            d = np.subtract(x3[a0:a1, c0:c1], mean_b, out=y3[a0:a1, c0:c1])
        elif single:
            d = np.subtract(kept, mean_b, out=kept)
        else:
            d = np.subtract(x3[a0:a1, c0:c1], mean_b, dtype=np.float32)
        squares += _row_dots(d).sum(axis=0)
    group_variance = squares.astype(np.float32) * inverse_count
    factor_b = _fused_factor(group_variance, scale[c0:c1], epsilon)[:, None]
    offset_b = offset[c0:c1, None]
    for a0, a1 in a_blocks:
        if in_place:
            d = y3[a0:a1, c0:c1]
        elif single:
            d = kept
        else:
            d = np.subtract(x3[a0:a1, c0:c1], mean_b, dtype=np.float32)
        np.multiply(d, factor_b, out=d)
        np.add(d, offset_b, out=y3[a0:a1, c0:c1])
    return group_mean, group_variance


def _columns(*vectors: Any) -> Any:
    """``[C]`` (or one-value) vectors as ``[C, 1]`` (``[1, 1]``) columns; None stays None."""
    return [
        None if v is None else (v.reshape(-1, 1) if v.size > 1 else v.reshape(1, 1))
        for v in vectors
    ]


def _channel_rows(column: Any, c0: Any, c1: Any) -> Any:
    """Channels ``c0:c1`` of a column from ``_columns`` (a one-value column serves all)."""
    return column if column.shape[0] == 1 else column[c0:c1]


def _compute(dtype: Any) -> Any:
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def _segments(length: Any) -> Any:
    return [(s0, min(length, s0 + _SEGMENT)) for s0 in range(0, length, _SEGMENT)]


def _row_sums(block: Any) -> Any:
    """Σ along the last (contiguous) axis, float64, over runs of ``_SEGMENT``.

    NumPy's own pairwise summation rather than a BLAS product with ones: its
    error does not depend on the BLAS build (NumPy 1.26's OpenBLAS on an
    AVX-512 processor sums 1600 float32 values 8 epsilons off; NumPy's
    pairwise sum stays within one), at about 1.4× the time of that one pass.
    """
    length = block.shape[-1]
    total = None
    for s0, s1 in _segments(length):
        part = np.add.reduce(block[..., s0:s1], axis=-1).astype(np.float64)
        total = part if total is None else total + part
    return total


def _row_dots(a: Any, b: Any = None) -> Any:
    """Σ a·b (Σ a² without ``b``) along the last (contiguous) axis, float64, by BLAS runs of ``_SEGMENT``."""
    b = a if b is None else b
    if a.ndim == 3 and a.shape[1] == 1:
        return _row_dots(a[:, 0], b[:, 0])[:, None]
    total = None
    for s0, s1 in _segments(a.shape[-1]):
        part = _vecdot(a[..., s0:s1], b[..., s0:s1]).astype(np.float64)
        total = part if total is None else total + part
    return total


def _vecdot(a: Any, b: Any) -> Any:
    """``Σ a·b`` along the last axis (``np.vecdot`` is NumPy 2; einsum's loop before it)."""
    if _HAS_VECDOT:
        return np.vecdot(a, b)
    return np.einsum("...i,...i->...", a, b)


_HAS_VECDOT = hasattr(np, "vecdot")


def _column_sums(block: Any) -> Any:
    """Column sums of a contiguous ``(rows, width)`` float block, as float64.

    At most ``_RUN`` rows are added in float32 per value (an elementwise
    ``add.reduce`` over ``_RUN`` slabs of whole rows); the slab totals are
    added in float64. Not BLAS: this runs in worker threads, and some BLAS
    builds (NumPy 1.26's OpenBLAS) serialise calls from several threads, at
    a hundred times the cost.
    """
    rows, width = block.shape
    if rows >= 2 * _RUN and rows % _RUN == 0:
        partial = np.add.reduce(block.reshape(_RUN, rows // _RUN, width), axis=0)
        return partial.sum(axis=0, dtype=np.float64)
    return block.sum(axis=0, dtype=np.float64)

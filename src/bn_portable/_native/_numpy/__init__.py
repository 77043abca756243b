"""NumPy fast paths: cache-blocked passes, one output buffer, float64 totals of short sums.

The generic kernels spell TensorFlow's formulas as whole-array expressions:
every step allocates a temporary as large as the input and walks it through
memory again. Here each kernel walks the input in blocks that fit in cache,
does every elementwise step of a block while it is there and writes straight
into the one output array. Nothing else as large as the input is allocated:
the peak extra memory is the output plus a few block-sized buffers (at most
about a fifth of the input; ``tests/test_fast_paths_numpy_memory.py`` checks ≤ 1.25× the
input in all). A small input in wide rows (``_plan.WHOLE_PASS_INPUT``) takes
its elementwise passes whole instead, straight into the output (``moments``'
centred squares, which have no output, into one temporary of the input's
size, 1 MB of float32 at most): there the block loop cost more than cache
blocking saves.

Why the results are TensorFlow's
--------------------------------
- **Elementwise steps** are the generic kernels' ufuncs on the same operands
  in the same order (``_elementwise``), so with the same statistics they give
  the same bits: ``fused_inference``, ``normalize`` and ``gradient_input``
  are bit-identical to the generic kernels.
- **Sums** differ from the generic kernels only in the order of the
  additions, and keep one contract (``_reductions``): float64 totals of short
  partial sums in the compute dtype, rounded once. TensorFlow's operation
  order is kept around them: the fused mean is the float32 sum times
  ``float32(1/n)`` and ``local_moments``' is the sum divided by ``n``; the
  squared deviations are taken from that rounded mean (two passes); the
  backward's sums are ``Σdy`` and ``Σdy·(x − mean)``. The fast statistics
  stay within a couple of ulps of the exactly rounded values (the generic
  kernels' float64-accumulated sums are exact to their rounding), so
  training's ``y`` agrees with the generic kernel to a few ulps of its scale.

Modules: ``_plan`` (the ``(A, C, S)`` view and its blocks, plain data from
the shape), ``_reductions`` (sums), ``_elementwise`` (output passes),
``_training`` (the fused training kernel), ``_eligibility`` (which calls are
taken; everything else returns ``NotImplemented`` for the generic path).

Threads: the blocks of the inference, ``normalize``, moments and backward
kernels are shared among threads, one per usable CPU unless
``BN_PORTABLE_NUM_THREADS`` says otherwise (``_threads`` has the measurements);
the blocking, and so every result, is the same for any number of threads.

Limits: NumPy's float16 conversion is scalar code (about 1.2 ns per value
each way), so float16 input is dominated by widening and narrowing; the
blocked kernel converts each value in at most three times (NHWC training) and
out once, and takes float16 only from ``SMALLEST_HALF_INPUT`` values (then
mainly for memory: no float32 copy of the input).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._registry import Kernel
from .._switch import fast_paths_enabled
from . import _elementwise, _reductions
from ._eligibility import (
    MOMENT_DTYPES,
    compute_vector,
    fusable,
    large_plain_array,
    same_layout,
    single_varying_axis,
)
from ._plan import compute_dtype, plan_for
from ._training import train

__all__ = [
    "KERNELS",
    "fused_inference",
    "fused_training_core",
    "gradient_input",
    "gradient_sums",
    "local_moments",
    "normalize",
    "weighted_local_moments",
]


def fused_training_core(
    x: Any, scale: Any, offset: Any, epsilon: Any, channel: int, *, xp: Any
) -> Any:
    """Blocked fused training: ``y``, batch mean, biased variance, count."""
    if not fusable(x, scale, offset):
        return NotImplemented
    plan = plan_for(x.shape, channel, x.dtype.itemsize, shared=False)
    if plan.count < 2:
        return NotImplemented  # the empty and n = 1 corner cases stay generic
    y = np.empty(x.shape, dtype=x.dtype)
    batch_mean, biased_variance = train(plan, x, y, scale, offset, epsilon)
    return y, batch_mean, biased_variance, plan.count


def fused_inference(
    x: Any,
    scale: Any,
    offset: Any,
    mean: Any,
    variance: Any,
    epsilon: Any,
    channel: int,
    *,
    xp: Any,
) -> Any:
    """Blocked fused inference: ``(x − mean)·(rsqrt(var + ε)·scale) + offset``."""
    if not fusable(x, scale, offset, mean, variance):
        return NotImplemented
    plan = plan_for(x.shape, channel, x.dtype.itemsize, shared=True)
    factor = _elementwise.fused_factor(variance, scale, epsilon)
    y = np.empty(x.shape, dtype=x.dtype)
    _elementwise.affine(plan, x, y, mean, factor, offset)
    return y


def local_moments(x: Any, axes: tuple[int, ...], *, xp: Any, compute: Any = None) -> Any:
    """``(sum / n, Σ(x − mean)²)`` keepdims, in the compute dtype, over every axis but one at most.

    float16 x is summed in float32, block by block: the generic kernel's
    ``compute=float32``; other x only in their own dtype.
    """
    if not large_plain_array(x, MOMENT_DTYPES):
        return NotImplemented
    if compute_dtype(x.dtype) != np.dtype(x.dtype if compute is None else compute):
        return NotImplemented  # the sums run in compute_dtype: only where the generic kernel's do
    kept = [axis for axis in range(x.ndim) if axis not in axes]
    if len(kept) > 1:
        return NotImplemented
    # Every axis reduced: one channel of all the values.
    channel, shape = (kept[0], tuple(x.shape)) if kept else (0, (1, x.size))
    plan = plan_for(shape, channel, x.dtype.itemsize, shared=True)
    data = x.reshape(shape)
    compute = compute_dtype(x.dtype)
    # tf.nn.moments (reduce_mean): the sum divided by n, in the compute dtype.
    mean = _reductions.channel_sums(plan, data).astype(compute) / compute.type(plan.count)
    m2 = _reductions.squared_deviation_sums(plan, data, mean).astype(compute)
    keep_shape = tuple(1 if axis in axes else x.shape[axis] for axis in range(x.ndim))
    return mean.reshape(keep_shape), m2.reshape(keep_shape)


def weighted_local_moments(
    x: Any, axes: tuple[int, ...], weights: Any, empty: str, *, xp: Any, compute: Any = None
) -> Any:
    """``(Σw, Σw·x / Σw, Σw·(x − mean)²)`` keepdims over every axis but one, in the compute
    dtype, for frequency weights constant along every axis after the channel's.

    Those weights are one per row of the plan's ``(A, C, S)`` view (``_reductions``);
    others (a mask over an NCHW batch's pixels) take the generic kernel. A zero
    total weight gives mean 0 (``empty="zero"``, ``tf.nn.weighted_moments``' ``div_no_nan``).
    """
    if empty != "zero" or not large_plain_array(x, MOMENT_DTYPES) or type(weights) is not np.ndarray:
        return NotImplemented
    wide = compute_dtype(x.dtype)
    if wide != np.dtype(x.dtype if compute is None else compute):
        return NotImplemented
    kept = [axis for axis in range(x.ndim) if axis not in axes]
    if len(kept) != 1 or weights.dtype.kind not in "biuf":
        return NotImplemented
    channel = kept[0]
    padded = (1,) * (x.ndim - weights.ndim) + tuple(weights.shape)
    if len(padded) != x.ndim or any(size != 1 for size in padded[channel:]):
        return NotImplemented
    if any(size not in (1, n) for size, n in zip(padded[:channel], x.shape[:channel])):
        return NotImplemented
    # One weight per row A (a copy 1/C of the input's size at most), in the compute dtype.
    per_row = np.broadcast_to(weights.reshape(padded[:channel]), x.shape[:channel])
    row_weights = np.ascontiguousarray(per_row.reshape(-1), dtype=wide)
    plan = plan_for(x.shape, channel, x.dtype.itemsize, shared=True)
    keep_shape = tuple(1 if axis in axes else x.shape[axis] for axis in range(x.ndim))
    # Σw over the broadcast weights: each row's weight counts once per value of S.
    count = np.full(keep_shape, np.sum(row_weights, dtype=np.float64) * plan.inner, dtype=wide)
    total = _reductions.channel_sums(plan, x, row_weights).astype(wide).reshape(keep_shape)
    mean = np.divide(total, count, out=np.zeros(keep_shape, dtype=wide), where=count != 0)
    m2 = _reductions.squared_deviation_sums(plan, x, mean, row_weights).astype(wide)
    return count, mean, m2.reshape(keep_shape)


def normalize(
    x: Any, mean: Any, variance: Any, offset: Any, scale: Any, variance_epsilon: Any, *, xp: Any,
    compute: Any = None, channel: int | None = None,
) -> Any:
    """``x·inv + shift`` with the generic kernel's ``inv`` and ``shift``, blocked (a float16
    x widened to float32 block by block with ``compute=float32``); ``[C]`` parameters
    along ``channel`` as the generic kernel takes them."""
    if not large_plain_array(x, MOMENT_DTYPES):
        return NotImplemented
    arithmetic = x.dtype if compute is None else np.dtype(compute)
    if arithmetic not in (x.dtype, compute_dtype(x.dtype)):
        return NotImplemented
    parameters = [value for value in (mean, variance, offset, scale) if value is not None]
    if not all(isinstance(value, np.ndarray) for value in parameters):
        return NotImplemented
    shapes = [value.shape for value in parameters]
    axis = single_varying_axis(x.shape, shapes) if channel is None else _vectors_along(x, shapes, channel)
    if axis is None:
        return NotImplemented
    inv, shift = _elementwise.normalization_terms(mean, variance, offset, scale, variance_epsilon)
    inv, shift = (_along(np.asarray(v, dtype=arithmetic), axis) for v in (inv, shift))
    shape, plan = _plan_along(x, axis)
    y = np.empty(x.shape, dtype=x.dtype)
    _elementwise.scale_shift(plan, x.reshape(shape), y.reshape(shape), inv, shift)
    return y


def gradient_sums(dy: Any, x: Any, mean: Any, channel: int, *, xp: Any) -> Any:
    """``(Σ dy, Σ dy·(x − mean))`` per channel, in mean's dtype (``_reductions``' contract)."""
    if not large_plain_array(x, MOMENT_DTYPES) or not same_layout(dy, x):
        return NotImplemented
    if not compute_vector(mean, x):
        return NotImplemented
    plan = plan_for(x.shape, channel, x.dtype.itemsize, shared=True)
    sum_dy, sum_dy_centred = _reductions.gradient_sums(plan, dy, x, mean)
    return sum_dy.astype(mean.dtype), sum_dy_centred.astype(mean.dtype)


def gradient_input(
    dy: Any, x: Any, mean: Any, a: Any, b: Any, c: Any, share: Any, *, xp: Any
) -> Any:
    """``dx = dy·a + ((x − mean)·b + c)``, the generic kernel's ufuncs in its order, blocked."""
    if share is not None or not large_plain_array(x, MOMENT_DTYPES) or not same_layout(dy, x):
        return NotImplemented
    parameters = [value for value in (mean, a, b, c) if value is not None]
    if not all(type(v) is np.ndarray and v.dtype == a.dtype for v in parameters):
        return NotImplemented
    if a.dtype != compute_dtype(x.dtype) or (b is None) != (c is None):
        return NotImplemented
    axis = single_varying_axis(x.shape, [value.shape for value in parameters])
    if axis is None:
        return NotImplemented
    vectors = [None if v is None else _along(v, axis) for v in (mean, a, b, c)]
    shape, plan = _plan_along(x, axis)
    dx = np.empty(x.shape, dtype=x.dtype)
    _elementwise.gradient_input(
        plan, dy.reshape(shape), x.reshape(shape), dx.reshape(shape), *vectors
    )
    return dx


def _vectors_along(x: Any, shapes: list[tuple[int, ...]], channel: int) -> int | None:
    """``channel`` where every parameter is a ``[C]`` vector of x's channel count, else None."""
    vector = (x.shape[channel],)
    return channel if all(shape == vector for shape in shapes) else None


def _along(value: Any, axis: int) -> Any:
    """A parameter that varies along ``axis`` (or nowhere: -1) as a flat ``[C]`` (``[1]``) vector."""
    return value.reshape(-1) if axis >= 0 else value.reshape(1)


def _plan_along(x: Any, axis: int) -> tuple[tuple[int, ...], Any]:
    """The shape to view ``x`` in and its plan, channels along ``axis``.

    Parameters that vary nowhere (``axis`` -1) make x one channel: a leading
    axis of length 1 is its channel axis.
    """
    shape = tuple(x.shape) if axis >= 0 else (1, *x.shape)
    return shape, plan_for(shape, max(axis, 0), x.dtype.itemsize, shared=True)


#: The kernels served here (``bn_portable._native.fast_path`` looks them up).
#: The fast-path switch (the dispatcher asks each fast-path module).
enabled = fast_paths_enabled

KERNELS = {
    Kernel.FUSED_TRAINING: fused_training_core,
    Kernel.FUSED_INFERENCE: fused_inference,
    Kernel.LOCAL_MOMENTS: local_moments,
    Kernel.WEIGHTED_MOMENTS: weighted_local_moments,
    Kernel.NORMALIZE: normalize,
    Kernel.GRADIENT_SUMS: gradient_sums,
    Kernel.GRADIENT_INPUT: gradient_input,
}

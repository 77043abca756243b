"""Flax NNX's ``flax.nnx.BatchNorm``, functionally: the new batch statistics are returned,
nothing is mutated.

The rules, read in Flax 0.12's ``nnx/nn/normalization.py`` and checked against the
module by the conformance goldens (``conformance/conventions/flax.py``):

- ``momentum`` weighs the old value (TensorFlow's decay): ``m·old + (1 − m)·batch``,
  ``1 − m`` computed in double and both weights rounded to the statistics' dtype;
- dtypes (``promote_dtype``): x, mean, var, scale and bias are cast to ``dtype``, or
  when it is None to their common type (JAX's promotion: float16 beside float32 is
  float32, float16 beside bfloat16 float32); the batch statistics are computed in that
  type promoted to at least float32; y comes back in the promoted type, so float16 x
  with Flax's float32 parameters gives float32 y; the new statistics have the type of
  the stored ones promoted with the batch statistics' (float32 by default);
- ``use_fast_variance=True`` (the default): ``var = max(0, E[x²] − E[x]²)`` from the two
  means ``jnp.mean(x)`` and ``jnp.mean(x²)``, one pass, reproduced with its flaw (a mean
  large against the spread loses the variance); ``False``: two passes,
  ``E[|x − E[x]|²]``;
- ``mask`` is a bool array broadcastable to x (numpy broadcasting, any channel may
  differ): ``jnp.mean(..., where=mask)``, so a channel whose mask is all False gets NaN
  statistics (0/0), and masked-out values (even NaN) never count;
- normalization centered: ``(x − mean)·(rsqrt(var + ε)·scale) + bias``.

``cross_replica_sum`` reproduces ``axis_name`` (``lax.pmean`` over the named axis; pass
``bn_portable.distributed.jax_cross_replica_sum(name)`` under ``shard_map``/``pmap``):
each replica's *means* are averaged with equal weight, ``Σ_r mean_r / R``, R being the
reducer's sum of ones, one collective per ``pmean`` Flax makes. With uneven per-replica
counts (uneven masks, or shards of different sizes) that is not the global batch's mean:
Flax's semantics, kept. ``axis_index_groups`` and tuple ``axis`` are not supported.
"""

from __future__ import annotations

from typing import Any

from .._kernels._moments import biased_variance, per_count, two_pass_moments
from .._kernels._replicas import sum_across
from .._lib import _checks, _layout
from .._lib._compat import device
from .._lib._dtypes import astype, dtype_name, float32_value
from .._lib._sums import accurate_sum
from .._lib._typing import ArrayT, CrossReplicaSum, Namespace
from . import _common


def flax_batch_norm(
    x: ArrayT,
    mean: Any,
    var: Any,
    scale: Any = None,
    bias: Any = None,
    use_running_average: bool = False,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis: int = -1,
    use_fast_variance: bool = True,
    mask: Any = None,
    *,
    dtype: Any = None,
    cross_replica_sum: CrossReplicaSum | None = None,
) -> tuple[Any, Any, Any]:
    """Flax NNX's ``BatchNorm``: ``(y, mean, var)``, the statistics new.

    The module's variables by its names: ``mean`` and ``var`` (its ``BatchStat``s),
    ``scale`` and ``bias`` (its ``Param``s; None: ``use_scale=False`` /
    ``use_bias=False``), all ``[C]`` arrays (C = ``x.shape[axis]``) of x's library and
    device, each of any floating dtype; its settings by their names and defaults;
    ``use_running_average`` and ``mask`` (bool, broadcastable to x) as its call takes
    them. ``dtype`` is the module's (None, a dtype of x's library, or its name).
    ``cross_replica_sum`` stands for ``axis_name``: Flax's mean of per-replica means.
    The inputs are never modified; with ``use_running_average`` the given statistics
    come back. y has Flax's dtype (the promoted one: float32 for float16 x with float32
    parameters). The semantics are in ``bn_portable._conventions._flax``.

    Examples
    --------
    >>> import numpy as np
    >>> from bn_portable.conventions import flax_batch_norm
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [2.0, 20.0]], dtype=np.float32)
    >>> mean, var = np.zeros(2, np.float32), np.ones(2, np.float32)
    >>> y, mean, var = flax_batch_norm(x, mean, var)
    >>> y.round(3)
    array([[-1.225, -1.225],
           [ 1.225,  1.225],
           [ 0.   ,  0.   ]], dtype=float32)
    >>> mean.round(4), var.round(4)
    (array([0.02, 0.2 ], dtype=float32), array([0.9967, 1.6567], dtype=float32))
    >>> y, _, _ = flax_batch_norm(x.astype(np.float16), mean, var, use_running_average=True)
    >>> y.dtype                                   # promoted with the float32 statistics
    dtype('float32')
    """
    xp = _common.check_input("x", x, min_rank=1)
    channel = _common.channel_axis(axis, x.ndim, one_axis="one feature axis; tuples are not supported")
    _checks.check_bool("use_running_average", use_running_average)
    _checks.check_bool("use_fast_variance", use_fast_variance)
    momentum = _checks.check_real("momentum", momentum)
    epsilon = _checks.check_real("epsilon", epsilon, low=0.0)
    _checks.check_callable("cross_replica_sum", cross_replica_sum)
    for name, value in (("mean", mean), ("var", var)):
        if value is None:
            raise TypeError(f"{name} must be an array of shape ({x.shape[channel]},), got None")
    parameters = {"mean": mean, "var": var, "scale": scale, "bias": bias}
    for name, value in parameters.items():
        if value is not None:  # each keeps its own dtype: Flax promotes them together
            _common.check_channel_parameters(
                {name: value}, x, channel, xp=xp, dtypes=_common.FLOATING
            )
    if mask is not None:
        _check_mask(mask, x, xp)
    names = [dtype_name(a.dtype) for a in (x, mean, var, scale, bias) if a is not None]
    promoted = _dtype(
        xp, _requested(dtype) if dtype is not None else _promote(names), x, mean, var, scale, bias
    )
    x_p, mean_p, var_p, scale_p, bias_p = (
        None if a is None else astype(a, promoted, xp) for a in (x, mean, var, scale, bias)
    )
    if use_running_average:
        # The stored statistics, promoted: the arithmetic is in the promoted type.
        y = _normalize(x_p, mean_p, var_p, scale_p, bias_p, epsilon, channel, promoted, xp)
        return y, mean, var
    statistics = _dtype(xp, _promote([dtype_name(promoted), "float32"]), mean, var, x_p)
    batch_mean, batch_var = _batch_statistics(
        astype(x_p, statistics, xp), mask, channel, use_fast_variance, cross_replica_sum, xp
    )
    y = _normalize(x_p, batch_mean, batch_var, scale_p, bias_p, epsilon, channel, statistics, xp)
    return y, _moved(mean, batch_mean, momentum, xp), _moved(var, batch_var, momentum, xp)


def _check_mask(mask: Any, x: Any, xp: Namespace) -> None:
    """Flax's mask: a bool array broadcastable to x (``jnp.mean``'s ``where``)."""
    _checks.check_namespace("mask", mask, xp)
    _checks.check_device("mask", mask, device(x))
    if mask.dtype != xp.bool:
        raise TypeError(
            f"mask must be a bool array (Flax's jnp.mean(where=mask) takes no other), "
            f"got {dtype_name(mask.dtype)}: pass mask != 0"
        )
    _checks.check_broadcasts_to("mask", mask, tuple(x.shape))


def _requested(dtype: Any) -> str:
    """The name of the module's ``dtype`` argument (a dtype object or its name)."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    if name not in _common.FLOATING:
        raise TypeError(f"dtype must be None or one of {', '.join(_common.FLOATING)}; got {dtype!r}")
    return name


def _promote(names: list[str]) -> str:
    """JAX's promotion of floating dtypes: float64 > float32 > one half type; two half
    types meet in float32."""
    if "float64" in names:
        return "float64"
    if "float32" in names or len(set(names)) > 1:
        return "float32"
    return names[0]


def _dtype(xp: Namespace, name: str, *arrays: Any) -> Any:
    """The dtype named ``name``: one of the arrays' when it has it (array-api-compat's Dask
    namespace names no float16), else the namespace's."""
    for array in arrays:
        if array is not None and dtype_name(array.dtype) == name:
            return array.dtype
    if hasattr(xp, name):
        return getattr(xp, name)
    try:  # a library whose namespace lacks the name may still take it (Dask: NumPy's dtypes)
        return xp.zeros((), dtype=name).dtype
    except (TypeError, ValueError, AttributeError):
        raise TypeError(
            f"{name} is needed (Flax's dtype promotion) but this library has no {name}"
        ) from None


def _means(values: list[Any], axes: tuple[int, ...], mask: Any, xp: Namespace) -> list[Any]:
    """``jnp.mean(v, axes, where=mask)`` of each array (keepdims): ``Σ v / n`` over the
    kept positions, NaN where none is kept. One sum per array: the first pass of the
    moments kernel, all Flax's fast variance and its ``pmean`` take."""
    count: Any = 1
    for axis in axes:
        count *= values[0].shape[axis]
    if mask is not None:
        ones = xp.broadcast_to(astype(mask, values[0].dtype, xp), tuple(values[0].shape))
        count = accurate_sum(ones, axes, xp, keepdims=True)
    zero = xp.zeros((), dtype=values[0].dtype, device=device(values[0]))
    means = []
    for value in values:
        kept = value if mask is None else xp.where(mask, value, zero)
        total = accurate_sum(kept, axes, xp, keepdims=True)
        means.append(per_count(total, count, rounding="divide", empty="nan", xp=xp))
    return means


def _replica_means(means: list[Any], reducer: CrossReplicaSum, xp: Namespace) -> list[Any]:
    """``lax.pmean`` of each: the sum over replicas divided by their number (the sum of a one
    each replica adds), in one reducer call."""
    *totals, replicas = sum_across(reducer, [*means, xp.ones_like(means[0])], xp=xp)
    return [total / replicas for total in totals]


def _batch_statistics(
    wide: Any, mask: Any, channel: int, fast: bool, reducer: CrossReplicaSum | None, xp: Namespace
) -> tuple[Any, Any]:
    """``[C]`` batch mean and variance as ``_compute_stats`` takes them, in wide's dtype."""
    axes = _layout.reduction_axes(wide.ndim, channel)
    if fast:
        mu, mu2 = _means([wide, wide * wide], axes, mask, xp)
        if reducer is not None:
            mu, mu2 = _replica_means([mu, mu2], reducer, xp)
        # E[x²] − E[x]² may round below zero; Flax clips it (NaN stays NaN).
        variance = xp.maximum(mu2 - mu * mu, xp.zeros_like(mu))
        return xp.reshape(mu, (-1,)), xp.reshape(variance, (-1,))
    if reducer is None:  # the global batch is the local one: the exact two-pass kernel
        weights = None if mask is None else astype(mask, wide.dtype, xp)
        kept = wide
        if mask is not None:
            kept = xp.where(mask, wide, xp.zeros((), dtype=wide.dtype, device=device(wide)))
        summary = two_pass_moments(kept, axes, xp=xp, weights=weights, empty="nan")
        variance = biased_variance(summary, empty="nan", xp=xp)
        return xp.reshape(summary.mean, (-1,)), xp.reshape(variance, (-1,))
    (mu,) = _replica_means(_means([wide], axes, mask, xp), reducer, xp)
    centered = wide - mu
    (variance,) = _replica_means(_means([centered * centered], axes, mask, xp), reducer, xp)
    return xp.reshape(mu, (-1,)), xp.reshape(variance, (-1,))


def _normalize(
    x_p: Any, mean: Any, var: Any, scale: Any, bias: Any, epsilon: float, channel: int,
    arithmetic: Any, xp: Namespace,
) -> Any:
    """``(x − mean)·(rsqrt(var + ε)·scale) + bias`` in ``arithmetic``, y in x_p's dtype."""
    inv_std = _common.inverse_std(var, epsilon, xp=xp)
    return _common.normalize(
        x_p, mean, inv_std, scale, bias, channel=channel, compute=arithmetic, xp=xp
    )


def _moved(stored: Any, batch: Any, momentum: float, xp: Namespace) -> Any:
    """``momentum·stored + (1 − momentum)·batch`` in their promoted dtype (Flax's update)."""
    target = _dtype(xp, _promote([dtype_name(stored.dtype), dtype_name(batch.dtype)]), stored, batch)
    keep, take = momentum, 1.0 - momentum
    if dtype_name(target) == "float32":
        keep, take = float32_value(keep), float32_value(take)
    return _common.moving_average(
        astype(stored, target, xp), batch, new_weight=take, old_weight=keep, compute=target, xp=xp
    )

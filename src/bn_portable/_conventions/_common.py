"""What every framework's batch-norm convention shares: checks, batch statistics, the
centered normalization and moving averages.

Each convention module (``_pytorch``, ``_onnx``, ``_keras``, ``_flax``) owns its
defaults, its dtype rule and the order of its roundings, and builds on these
functions. They take the channel axis as a non-negative index, never look at
array values (no host reads: they trace under ``jax.jit`` and
``torch.compile(fullgraph=True)`` and stay lazy on Dask), and take ``xp`` as a
keyword. The statistics come from the one two-pass kernel
(``_kernels._moments.two_pass_moments``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._kernels._moments import Moments, biased_variance, per_count, two_pass_moments
from .._lib import _checks, _layout
from .._lib._backends import optimization_barrier
from .._lib._compat import device
from .._lib._dtypes import astype, dtype_name, is_half
from .._lib._numerics import rsqrt
from .._lib._typing import Namespace

#: The floating dtypes every convention takes for x.
FLOATING = ("float16", "bfloat16", "float32", "float64")


def check_input(name: str, x: Any, *, min_rank: int = 2) -> Namespace:
    """x's namespace, after checking that it is a dense floating array of rank ≥ ``min_rank``
    with known lengths."""
    xp: Namespace = _checks.namespace(**{name: x})
    _checks.check_floating(name, x, xp, FLOATING)
    if x.ndim < min_rank:
        raise ValueError(
            f"{name} must have rank {min_rank} or more (batch, channels, ...); "
            f"got shape {tuple(x.shape)}"
        )
    _checks.check_known_shape(name, x)
    return xp


def check_channel_parameters(
    parameters: Mapping[str, Any],
    x: Any,
    channel: int,
    *,
    xp: Namespace,
    dtypes: Sequence[str],
    reference: str = "x",
) -> None:
    """Each non-None parameter is an array of x's library and device, of shape ``[C]``
    (C = x's length along ``channel``), with a dtype among ``dtypes``, and all of one dtype.

    ``dtypes`` is the convention's rule (for example x's dtype, or float32 beside a
    half-precision x); a parameter outside it is a ``TypeError`` that names it.
    """
    channels = x.shape[channel]
    present = {name: value for name, value in parameters.items() if value is not None}
    for name, value in present.items():
        _checks.check_namespace(name, value, xp, reference)
        _checks.check_device(name, value, device(x), reference)
        if tuple(value.shape) != (channels,):
            raise ValueError(
                f"{name} must have shape ({channels},) (one value per channel of {reference}, "
                f"axis {channel}); got {tuple(value.shape)}"
            )
        if dtype_name(value.dtype) not in dtypes:
            raise TypeError(
                f"{name} must have dtype {' or '.join(dtypes)} for {reference} of dtype "
                f"{dtype_name(x.dtype)}, got {dtype_name(value.dtype)}"
            )
    _checks.check_same_dtype(present)


def opmath_dtype(dtype: Any, xp: Namespace) -> Any:
    """The dtype arithmetic on ``dtype`` data runs in: float32 for the half types (their
    range and precision are too small for sums), the dtype itself otherwise."""
    return xp.float32 if is_half(dtype) else dtype


def batch_moments(x: Any, channel: int, *, compute: Any, xp: Namespace) -> Moments:
    """Count, mean and m2 per channel over every axis but ``channel``, in ``compute``.

    ``mean`` and ``m2`` have shape ``[C]``; ``count`` is the number of elements per
    channel (a Python int). Two passes, from the one moments kernel.
    """
    axes = _layout.reduction_axes(x.ndim, channel)
    summary = two_pass_moments(x, axes, xp=xp, compute=compute)
    return Moments(summary.count, xp.reshape(summary.mean, (-1,)), xp.reshape(summary.m2, (-1,)))


def population_variance(summary: Moments, *, xp: Namespace) -> Any:
    """``m2 / n``: the biased batch variance (NaN for an empty batch)."""
    return biased_variance(summary, xp=xp)


def sample_variance(summary: Moments, *, xp: Namespace) -> Any:
    """``m2 / (n − 1)``: the unbiased (Bessel-corrected) batch variance.

    NaN when ``n ≤ 1``: a convention that moves its running variance toward it
    refuses such a batch (PyTorch does) before it gets here.
    """
    count = summary.count - 1
    return per_count(summary.m2, count if count > 0 else 0, rounding="divide", empty="nan", xp=xp)


def inverse_std(variance: Any, epsilon: float, *, xp: Namespace) -> Any:
    """``1/sqrt(variance + epsilon)``, in variance's dtype (half rounded once)."""
    return rsqrt(variance + epsilon, xp)


def normalize(
    x: Any,
    mean: Any,
    inv_std: Any,
    weight: Any,
    bias: Any,
    *,
    channel: int,
    compute: Any,
    xp: Namespace,
) -> Any:
    """``(x − mean)·(inv_std·weight) + bias`` in ``compute``, rounded once to x's dtype.

    ``mean``, ``inv_std``, ``weight`` and ``bias`` are ``[C]`` (``weight`` and
    ``bias`` may be None) and are cast to ``compute``. Centered: x − mean is
    formed before scaling, so a mean far larger than the spread does not cancel
    (the folded ``x·a + (bias − mean·a)`` that PyTorch's and ONNX Runtime's CPU
    kernels compute loses those digits; this form is never further from the
    float64 truth). The mean passes an ``optimization_barrier``: with the batch's own,
    XLA would merge this x − mean with the statistics' and keep it in memory (with
    running statistics there is nothing to merge, and it changes nothing).
    """
    rank = x.ndim
    mean = optimization_barrier(mean, xp)
    factor = astype(inv_std, compute, xp)
    if weight is not None:
        factor = factor * astype(weight, compute, xp)
    wide = astype(x, compute, xp)
    y = (wide - _layout.per_channel(astype(mean, compute, xp), rank, channel, xp)) * (
        _layout.per_channel(factor, rank, channel, xp)
    )
    if bias is not None:
        y = y + _layout.per_channel(astype(bias, compute, xp), rank, channel, xp)
    return astype(y, x.dtype, xp)


def moving_average(
    old: Any, new: Any, *, new_weight: Any, old_weight: Any = None, compute: Any, xp: Namespace
) -> Any:
    """``old·old_weight + new·new_weight`` in ``compute``, rounded to old's dtype.

    ``old_weight`` defaults to ``1 − new_weight`` (PyTorch's momentum, Keras' and
    Flax's ``1 − momentum``); ONNX gives both (its momentum weighs the old value).
    Weights are Python floats or 0-d arrays (a weight computed from a counter).
    """
    if old_weight is None:
        old_weight = 1 - new_weight
    wide = astype(old, compute, xp) * old_weight + astype(new, compute, xp) * new_weight
    return astype(wide, old.dtype, xp)


def channel_axis(axis: Any, rank: int, *, one_axis: str) -> int:
    """``axis`` (one int, negative from the end) as a non-negative index; ``one_axis`` says
    why a single int is required, for the message."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int ({one_axis}), got {axis!r}")
    if not -rank <= axis < rank:
        raise ValueError(f"axis must be in [-{rank}, {rank}) for x of rank {rank}; got {axis}")
    return axis % rank

"""``recalibrate``: precise BN, the moving statistics replaced by population ones.

After training, the moving averages are an exponentially weighted memory of
past batches computed with past weights. ``recalibrate`` runs over a whole
dataset once and puts the exact statistics of every sample in their place:
each batch is summarized as a ``PartialMoments`` (two-pass within the batch)
and the summaries are merged exactly (Chan et al.), so the result does not
depend on how the data is batched, and needs one batch in memory at a time.
With ``cross_replica_sum`` each replica passes its own part of the dataset and
all get the statistics of the union. Every batch is first shifted by a rough
mean (the first batches', agreed across replicas), which keeps float32's
precision in the merged variance where the mean is far larger than the spread.

The variance convention is that of the layer's TensorFlow path, because that
is what the moving variance would converge to on that path: Bessel-corrected
with the total count where the fused kernel updates it, biased elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from ._kernels._moments import Moments, merge_across, merge_two
from ._kernels._replicas import sum_across
from ._lib import _checks, _layout
from ._lib._compat import is_array_api_obj
from ._lib._dtypes import ComputeRule, astype, compute_dtype
from ._lib._numerics import divide_no_nan
from ._lib._typing import CrossReplicaSum, Namespace
from ._partial_moments import PartialMoments, summarize
from ._tf._options import DEFAULTS, layer_options
from ._tf._plan import prepare
from ._tf._state import BatchNormState

#: batch_norm's options recalibrate takes (``cross_replica_sum`` is its own argument).
_OPTIONS = tuple(name for name in DEFAULTS if name != "cross_replica_sum")


def recalibrate(
    batches: Any,
    state: BatchNormState | None,
    *,
    cross_replica_sum: CrossReplicaSum | None = None,
    progress: bool = False,
    **options: Any,
) -> BatchNormState:
    """``state`` with ``moving_mean`` and ``moving_variance`` set to the population statistics.

    Parameters
    ----------
    batches : iterable of arrays, or one array
        Every sample of the dataset, in batches laid out as ``batch_norm``'s
        ``x`` (a generator works, so does a list; one array, a chunked Dask
        array say, is taken as the whole dataset and stays lazy). Batches may
        have different lengths.
    state : BatchNormState or None
        The trained layer's state (None: the initial state, as ``batch_norm``
        creates it). Only the statistics change; ``beta`` and ``gamma`` are kept.
    cross_replica_sum : callable or None
        Each replica passes its part of the dataset, at least one batch
        (possibly of length 0); the statistics are those of all parts
        together (see ``bn_portable.distributed``).
    progress : bool
        Show a ``tqdm`` progress bar when tqdm is installed (nothing otherwise).
    **options
        ``batch_norm``'s options (``fused``, ``data_format``, ``epsilon``,
        ``renorm``, ``zero_debias_moving_mean``...), which decide the layout,
        the state's fields and the variance convention.

    Returns
    -------
    BatchNormState
        ``moving_mean`` is the mean over all samples; ``moving_variance`` is
        ``m2 / max(n − 1, 1)`` on the fused kernel's paths and ``m2 / n``
        elsewhere (n the total count per channel). With ``renorm``,
        ``moving_stddev = sqrt(variance + epsilon)`` and the moving variance is
        derived from it as the layer derives it; ``renorm_mean`` and
        ``renorm_stddev`` (the training-time renorm statistics) are kept, and
        so are the zero-debias bookkeeping fields ``moving_mean_biased`` and
        ``local_step``.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.arange(8, dtype=np.float32).reshape(4, 2)  # 4 samples, 2 channels
    >>> _, state = bn.batch_norm(x)  # one training step moves the statistics a little
    >>> print(state.moving_mean, state.moving_variance)
    [0.003 0.004] [1.004 1.004]
    >>> state = bn.recalibrate([x[:2], x[2:]], state)  # the dataset, in two batches
    >>> print(state.moving_mean, state.moving_variance)  # its mean and (biased) variance
    [3. 4.] [5. 5.]
    """
    layer = _layer_options(options, cross_replica_sum)
    _checks.check_bool("progress", progress)
    if is_array_api_obj(batches):
        batches = (batches,)
    elif not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be an iterable of arrays or one array, got {type(batches).__name__}"
        )
    summary, shift, plan, xp, state = _summarize_all(_with_progress(batches, progress), state, layer)
    if layer.cross_replica_sum is not None:
        summary = PartialMoments(*merge_across(Moments(*summary), layer.cross_replica_sum, xp=xp))
    shifted_mean, variance = summary.mean_variance(bessel=plan.fused_kernel)
    mean = shift + shifted_mean
    mean, variance = astype(mean, plan.state_dtype, xp), astype(variance, plan.state_dtype, xp)
    if not layer.renorm:
        return state._replace(moving_mean=mean, moving_variance=variance)
    stddev = xp.sqrt(variance + layer.epsilon)
    derived_variance = xp.maximum(stddev * stddev - layer.epsilon, xp.zeros_like(stddev))
    return state._replace(moving_mean=mean, moving_variance=derived_variance, moving_stddev=stddev)


def _layer_options(options: dict[str, Any], cross_replica_sum: Any) -> Any:
    if "batch_weights" in options:
        raise TypeError(
            "recalibrate takes no batch_weights: the population statistics weigh every "
            "sample once (pass only the samples to count)"
        )
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(
            f"recalibrate got unknown options {unknown}; it takes batch_norm's: "
            f"{', '.join(sorted(_OPTIONS))}"
        )
    return layer_options(weighted=False, **options, cross_replica_sum=cross_replica_sum)


def _summarize_all(batches: Any, state: Any, layer: Any) -> Any:
    """The merged summary of every batch, of the data minus ``shift`` (per channel)."""
    summary = shift = plan = xp = None
    checked = dataclasses.replace(layer, param_initializers={})
    for index, batch in enumerate(batches):
        if not is_array_api_obj(batch):
            raise TypeError(f"batches[{index}] must be an array, got {type(batch).__name__}")
        xp, plan, state = prepare(batch, state, None, layer if index == 0 else checked)
        batch = astype(batch, compute_dtype(xp, batch.dtype, ComputeRule.HALF_IN_FLOAT32), xp)
        if shift is None:
            shift = _shift(batch, plan, layer.cross_replica_sum, xp)
        shifted = batch - _layout.per_channel(shift, batch.ndim, plan.channel, xp)
        part = summarize(shifted, plan.axes, None, xp)
        summary = part if summary is None else PartialMoments(*merge_two(Moments(*summary), Moments(*part), xp=xp))
    if summary is None:
        raise ValueError("batches is empty: recalibrate needs at least one batch")
    return summary, shift, plan, xp, state


def _shift(first_batch: Any, plan: Any, cross_replica_sum: Any, xp: Namespace) -> Any:
    """A rough mean (the first batches'), subtracted from every batch before it is summarized.

    Merging rounds each batch's mean at the mean's magnitude (see
    ``merge_moments``); around the shift the means are of the order of the
    spread, so the merged variance keeps float32's precision even where the
    mean is far larger than the spread. Replicas agree on one shift.
    """
    first = summarize(first_batch, plan.axes, None, xp)
    if cross_replica_sum is None:
        return first.mean
    count, weighted_means = sum_across(
        cross_replica_sum, [first.count, first.count * first.mean], xp=xp
    )
    return divide_no_nan(weighted_means, count, xp)


def _with_progress(batches: Any, progress: Any) -> Any:
    if not progress:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is optional; the statistics are not
        return batches
    return tqdm(batches, desc="recalibrate", unit="batch")


__all__ = ["recalibrate"]

"""Keras 3's ``keras.layers.BatchNormalization``, functionally: the new moving statistics are
returned, nothing is mutated.

The rules, read in Keras 3.15's ``layers/normalization/batch_normalization.py`` and
checked against the layer on the JAX backend by the conformance goldens
(``conformance/conventions/keras.py``):

- channels on ``axis`` (default -1), statistics over every other axis; the batch
  variance is the biased one (``jnp.var``: two passes) and the moving variance moves
  toward it (Keras 2's fused path moved it toward the Bessel-corrected one);
- ``moving = moving·momentum + batch·(1 − momentum)``, ``1 − momentum`` computed in
  double and both weights rounded to float32;
- everything is computed in float32: the layer casts x to ``backend.result_type(x.dtype,
  "float32")``, which is float32 for every floating dtype, float64 included (Keras'
  promotion lattice, checked on 3.15: the ``float64`` policy's y has float64's dtype and
  float32's digits); the variables are cast to float32 and the new statistics rounded
  back to their own dtype (float32 under the ``mixed_float16``/``mixed_bfloat16``
  policies, float16 under the plain ``float16`` policy); y is rounded to x's dtype (the
  layer's compute dtype when x matches its policy);
- normalization as ``ops.batch_normalization``: ``x·inv + (beta − mean·inv)`` with
  ``inv = rsqrt(var + ε)·gamma``;
- ``mask`` has rank ``x.ndim − 1`` and is expanded on the **last** axis whatever
  ``axis`` is (``ops.expand_dims(mask, -1)``), cast to bool; the masked mean and
  variance divide by ``Σmask + 1e-7`` (``backend.epsilon()``), so a batch whose mask
  is all False gives mean and variance 0, and masked-out values (even NaN) never count.

``cross_replica_sum`` makes the statistics the global batch's, exactly (counts and sums
are summed over replicas, deviations taken from the global mean), masks included. Keras
3 itself synchronizes only on the TensorFlow backend (``synchronized=True`` raises on
JAX, PyTorch and NumPy), with a one-pass ``E[x²] − E[x]²`` and not at all under a mask;
this is what that option means, without those two flaws.
"""

from __future__ import annotations

from typing import Any

from .._kernels._moments import Moments, biased_variance, two_pass_moments
from .._kernels._normalize import normalize as folded_normalize
from .._lib import _checks, _layout
from .._lib._compat import device
from .._lib._dtypes import astype, float32_value
from .._lib._typing import ArrayT, CrossReplicaSum, Namespace
from . import _common

#: ``keras.backend.epsilon()``: the fuzz Keras adds to the mask's count before dividing.
MASK_FUZZ = 1e-7


def keras_batch_norm(
    x: ArrayT,
    moving_mean: Any,
    moving_variance: Any,
    gamma: Any = None,
    beta: Any = None,
    training: bool = False,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    axis: int = -1,
    mask: Any = None,
    *,
    cross_replica_sum: CrossReplicaSum | None = None,
) -> tuple[ArrayT, Any, Any]:
    """Keras 3's ``BatchNormalization``: ``(y, moving_mean, moving_variance)``, new.

    The layer's arguments by its names and defaults: ``moving_mean`` and
    ``moving_variance`` are its non-trainable variables, ``gamma`` and ``beta`` its
    trainable ones (None: ``scale=False`` / ``center=False``), ``training`` and ``mask``
    its call arguments. All ``[C]`` arrays (C = ``x.shape[axis]``) of x's library and
    device, each of any floating dtype (the variable dtype of the layer's policy).
    The inputs are never modified; in inference the given statistics come back.

    ``mask`` (rank ``x.ndim − 1``, bool, integer or real: nonzero counts) is expanded
    on x's last axis, as Keras does, whatever ``axis`` is. ``cross_replica_sum``
    (see ``bn_portable.distributed``) makes the statistics those of the global batch.
    The semantics, and where they depart from Keras on other backends, are in
    ``bn_portable._conventions._keras``.

    Examples
    --------
    >>> import numpy as np
    >>> from bn_portable.conventions import keras_batch_norm
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [2.0, 20.0]], dtype=np.float32)
    >>> mean, variance = np.zeros(2, np.float32), np.ones(2, np.float32)
    >>> y, mean, variance = keras_batch_norm(x, mean, variance, training=True)
    >>> y.round(3)
    array([[-1.224, -1.225],
           [ 1.224,  1.225],
           [ 0.   ,  0.   ]], dtype=float32)
    >>> mean.round(4), variance.round(4)
    (array([0.02, 0.2 ], dtype=float32), array([0.9967, 1.6567], dtype=float32))
    >>> mask = np.array([True, True, False])       # the last row does not count
    >>> _, mean, variance = keras_batch_norm(x, mean, variance, training=True, mask=mask)
    >>> mean.round(4), variance.round(4)
    (array([0.0398, 0.398 ], dtype=float32), array([0.9967, 2.6401], dtype=float32))
    """
    xp = _common.check_input("x", x, min_rank=1)
    channel = _common.channel_axis(axis, x.ndim, one_axis="Keras normalizes along one axis")
    _checks.check_bool("training", training)
    momentum = _checks.check_real("momentum", momentum)
    epsilon = _checks.check_real("epsilon", epsilon, low=0.0)
    _checks.check_callable("cross_replica_sum", cross_replica_sum)
    for name, value in (("moving_mean", moving_mean), ("moving_variance", moving_variance)):
        if value is None:
            raise TypeError(f"{name} must be an array of shape ({x.shape[channel]},), got None")
    parameters = {
        "moving_mean": moving_mean, "moving_variance": moving_variance, "gamma": gamma, "beta": beta,
    }
    for name, value in parameters.items():
        if value is not None:  # each variable keeps its own dtype (policies mix them)
            _common.check_channel_parameters(
                {name: value}, x, channel, xp=xp, dtypes=_common.FLOATING
            )
    if mask is not None:
        _check_mask(mask, x, xp)
    compute = xp.float32  # backend.result_type(x.dtype, "float32"), for every float

    def as_compute(array: Any) -> Any:
        return None if array is None else astype(array, compute, xp)

    if not training:
        y = _normalize(
            x, as_compute(moving_mean), as_compute(moving_variance), as_compute(gamma),
            as_compute(beta), epsilon, channel, compute, xp,
        )
        return y, moving_mean, moving_variance
    wide = astype(x, compute, xp)
    mean, variance = _batch_statistics(wide, mask, channel, cross_replica_sum, xp)
    y = _normalize(
        x, mean, variance, as_compute(gamma), as_compute(beta), epsilon, channel, compute, xp
    )
    keep, take = float32_value(momentum), float32_value(1.0 - momentum)
    new_mean = _common.moving_average(
        moving_mean, mean, new_weight=take, old_weight=keep, compute=compute, xp=xp
    )
    new_variance = _common.moving_average(
        moving_variance, variance, new_weight=take, old_weight=keep, compute=compute, xp=xp
    )
    return y, new_mean, new_variance


def _check_mask(mask: Any, x: Any, xp: Namespace) -> None:
    """Keras' mask: rank ``x.ndim − 1``, broadcastable to x once expanded on the last axis."""
    _checks.check_namespace("mask", mask, xp)
    _checks.check_device("mask", mask, device(x))
    _checks.check_real_dtype("mask", mask, xp)
    if mask.ndim != x.ndim - 1:
        raise ValueError(
            f"mask must have one dimension less than x (Keras' mask, rank {x.ndim - 1}); "
            f"got shape {tuple(mask.shape)} for x of shape {tuple(x.shape)}"
        )
    expanded = (*tuple(mask.shape), 1)
    if any(m not in (1, n) for m, n in zip(expanded, x.shape)):
        raise ValueError(
            f"mask must broadcast to x's shape without its last axis {tuple(x.shape[:-1])} "
            f"(Keras expands it on the last axis); got shape {tuple(mask.shape)}"
        )


def _batch_statistics(
    wide: Any, mask: Any, channel: int, reducer: CrossReplicaSum | None, xp: Namespace
) -> tuple[Any, Any]:
    """``[C]`` batch mean and biased variance of the compute-dtype input, as Keras takes them."""
    axes = _layout.reduction_axes(wide.ndim, channel)
    if mask is None:
        summary = two_pass_moments(wide, axes, xp=xp, reducer=reducer)
        return xp.reshape(summary.mean, (-1,)), xp.reshape(biased_variance(summary, xp=xp), (-1,))
    counts = xp.expand_dims(mask != 0 if mask.dtype != xp.bool else mask, axis=-1)
    # Keras sums ops.where(mask, x, 0): masked-out values do not count even when not finite.
    zero = xp.zeros((), dtype=wide.dtype, device=device(wide))
    kept = xp.where(counts, wide, zero)
    summary = two_pass_moments(
        kept, axes, xp=xp, weights=astype(counts, wide.dtype, xp), reducer=reducer, empty="zero"
    )
    mean, variance = _fuzzed(summary, wide.dtype, xp)
    return xp.reshape(mean, (-1,)), xp.reshape(variance, (-1,))


def _fuzzed(summary: Moments, dtype: Any, xp: Namespace) -> tuple[Any, Any]:
    """Keras' masked mean and variance: ``Σm·x / (Σm + 1e-7)`` and ``Σm·(x − mean)² / (Σm + 1e-7)``.

    From the exact two-pass summary (count n, mean μ, m2): Keras' mean is
    ``μ·n/(n + ε)``, and its squared deviations are taken from that mean, which adds
    ``n·δ²`` (δ = μ − Keras' mean) to m2. In float32 n + ε rounds to n for every
    n ≥ 2, so both are then the exact statistics (n = 1 is one ulp off).
    """
    count = astype(summary.count, dtype, xp)
    denominator = count + MASK_FUZZ  # a Python float beside the array: rounded to its dtype
    mean = summary.mean * (count / denominator)
    delta = summary.mean - mean
    variance = (summary.m2 + count * (delta * delta)) / denominator
    return mean, variance


def _normalize(
    x: Any, mean: Any, variance: Any, gamma: Any, beta: Any, epsilon: float, channel: int,
    compute: Any, xp: Namespace,
) -> Any:
    """``ops.batch_normalization`` on the ``[C]`` statistics, y rounded to x's dtype."""
    rank = x.ndim
    mean_b, variance_b, beta_b, gamma_b = (
        None if a is None else _layout.per_channel(a, rank, channel, xp)
        for a in (mean, variance, beta, gamma)
    )
    widen = None if compute == x.dtype else compute
    y: Any = folded_normalize(
        x, mean_b, variance_b, beta_b, gamma_b, float32_value(epsilon), xp=xp, compute=widen
    )
    return y

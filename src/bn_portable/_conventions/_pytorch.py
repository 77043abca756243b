"""PyTorch's batch norm (``torch.nn.functional.batch_norm`` and ``nn.BatchNorm1d/2d/3d``),
functionally: the new running statistics are returned, nothing is mutated.

The rules, each checked against PyTorch 2.13's CPU kernel by the conformance goldens
(``conformance/conventions/pytorch.py``):

- channels on axis 1, any rank ≥ 2; statistics over every other axis;
- normalization with the biased batch variance; the running variance moves toward
  the unbiased one (``m2 / (n − 1)``); ``momentum`` weighs the new batch
  (``old·(1 − momentum) + new·momentum``); ``momentum=None`` is the cumulative
  average ``1/num_batches_tracked`` after the increment (``_BatchNorm.forward``);
- no running statistics (``track_running_stats=False``): batch statistics in
  training and in evaluation, as the module does;
- half precision: arithmetic in float32 ("opmath"); the parameters and running
  statistics are all of x's dtype, or all float32 (the mixed form autocast and
  ``.half()`` on the input alone give); in training the batch mean and
  ``1/sqrt(var + eps)`` are rounded to the parameters' dtype before normalizing,
  as PyTorch stores them (``save_mean``, ``save_invstd``);
- a batch of one value per channel in training is refused (PyTorch's ValueError).

PyTorch's CPU kernel normalizes in the folded form ``x·a + (bias − mean·a)``;
here it is centered (``_common.normalize``), which agrees to rounding and is never
further from the float64 truth where |mean| ≫ σ.
"""

from __future__ import annotations

from typing import Any

from .._lib import _checks, _layout
from .._lib._compat import device
from .._lib._dtypes import astype, dtype_name, is_half
from .._lib._typing import ArrayT, Namespace
from . import _common

#: PyTorch's channel axis.
CHANNEL = 1


def pytorch_batch_norm(
    x: ArrayT,
    running_mean: Any,
    running_var: Any,
    weight: Any = None,
    bias: Any = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    num_batches_tracked: Any = None,
) -> tuple[ArrayT, Any, Any, Any]:
    """PyTorch's batch norm: ``(y, running_mean, running_var, num_batches_tracked)``, new.

    The arguments are ``torch.nn.functional.batch_norm``'s, with the module's
    ``num_batches_tracked`` buffer as a keyword. ``x`` is ``(N, C, ...)``;
    ``running_mean``, ``running_var``, ``weight`` and ``bias`` are ``[C]`` arrays of
    x's library and device (``weight``/``bias`` None: no affine). The inputs are
    never modified; the returned statistics are new arrays (the given ones when
    nothing moves them).

    - ``training=True``: normalize with the batch mean and biased variance; move
      the running mean toward the batch mean and the running variance toward the
      unbiased batch variance by ``momentum``, or by ``1/num_batches_tracked``
      (after adding one) when ``momentum`` is None (a cumulative average), as
      ``nn.BatchNorm2d(momentum=None)`` does; add one to ``num_batches_tracked``
      (an integer 0-d array) when given. A batch of one value per channel is a
      ``ValueError``, as in PyTorch.
    - ``training=False``: normalize with the running statistics; nothing moves.
    - ``running_mean=running_var=None`` (``track_running_stats=False``): batch
      statistics whatever ``training`` says, and ``None`` back for both.

    Half-precision ``x`` is computed in float32; the parameters and running
    statistics are either all of x's dtype or all float32, and keep their dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from bn_portable.conventions import pytorch_batch_norm
    >>> x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)      # (N, C, L)
    >>> mean, var = np.zeros(2, np.float32), np.ones(2, np.float32)
    >>> y, mean1, var1, steps = pytorch_batch_norm(
    ...     x, mean, var, training=True, num_batches_tracked=np.array(0))
    >>> print(mean1, var1, steps)          # toward the mean 4.5 and the unbiased variance 13.1
    [0.45000002 0.65000004] [2.21 2.21] 1
    >>> print(y[:, 0, 0])
    [-1.3619691 -0.1513299  1.0593094]
    >>> y, _, _, _ = pytorch_batch_norm(x, mean1, var1)          # evaluation
    >>> print(y[0, 0])
    [-0.30270207  0.36996916]
    """
    xp = _common.check_input("x", x)
    _checks.check_bool("training", training)
    eps = _checks.check_real("eps", eps, low=0.0)
    factor = None if momentum is None else _checks.check_real("momentum", momentum)
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "running_mean and running_var must either both be None or neither be None "
            "(None for both: track_running_stats=False)"
        )
    parameters = {
        "running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias,
    }
    # PyTorch's rule: every parameter has x's dtype, or (half x) every one is float32.
    allowed = (dtype_name(x.dtype), "float32") if is_half(x.dtype) else (dtype_name(x.dtype),)
    _common.check_channel_parameters(parameters, x, CHANNEL, xp=xp, dtypes=allowed)
    tracked = running_mean is not None
    _check_counter(num_batches_tracked, x, xp)
    if training and tracked and momentum is None and num_batches_tracked is None:
        raise ValueError(
            "momentum=None (a cumulative moving average) needs num_batches_tracked, the number "
            "of batches seen so far: pass num_batches_tracked=<integer 0-d array>"
        )
    present = [p for p in parameters.values() if p is not None]
    param_dtype = present[0].dtype if present else x.dtype
    compute = _common.opmath_dtype(x.dtype, xp)
    if tracked and not training:  # the module normalizes with the running statistics
        inv_std = _common.inverse_std(astype(running_var, compute, xp), eps, xp=xp)
        y = _common.normalize(
            x, running_mean, inv_std, weight, bias, channel=CHANNEL, compute=compute, xp=xp
        )
        return y, running_mean, running_var, num_batches_tracked
    _check_more_than_one_value(x)
    summary = _common.batch_moments(x, CHANNEL, compute=compute, xp=xp)
    # PyTorch keeps the batch mean and 1/sqrt(var + eps) in the parameters' dtype
    # (its save_mean and save_invstd) and normalizes with those.
    saved_mean = astype(summary.mean, param_dtype, xp)
    variance = _common.population_variance(summary, xp=xp)
    saved_inv_std = astype(_common.inverse_std(variance, eps, xp=xp), param_dtype, xp)
    y = _common.normalize(
        x, saved_mean, saved_inv_std, weight, bias, channel=CHANNEL, compute=compute, xp=xp
    )
    if not (training and tracked):  # batch statistics, nothing to move
        return y, running_mean, running_var, num_batches_tracked
    counter = None if num_batches_tracked is None else num_batches_tracked + 1
    new_weight: Any = factor
    if factor is None:
        new_weight = 1 / astype(counter, compute, xp)
    mean = _common.moving_average(
        running_mean, summary.mean, new_weight=new_weight, compute=compute, xp=xp
    )
    var = _common.moving_average(
        running_var, _common.sample_variance(summary, xp=xp), new_weight=new_weight,
        compute=compute, xp=xp,
    )
    return y, mean, var, counter


def _check_counter(counter: Any, x: Any, xp: Namespace) -> None:
    """``num_batches_tracked``: None or an integer 0-d array of x's library and device."""
    if counter is None:
        return
    _checks.check_namespace("num_batches_tracked", counter, xp)
    _checks.check_device("num_batches_tracked", counter, device(x))
    if not xp.isdtype(counter.dtype, "integral"):
        raise TypeError(
            "num_batches_tracked must have an integer dtype (PyTorch's is int64), got "
            f"{dtype_name(counter.dtype)}"
        )
    if counter.ndim != 0:
        raise ValueError(
            f"num_batches_tracked must be a 0-d array, got shape {tuple(counter.shape)}"
        )


def _check_more_than_one_value(x: Any) -> None:
    """PyTorch refuses batch statistics from one value per channel (``_verify_batch_size``)."""
    if _layout.elements_per_channel(x, CHANNEL) == 1:
        raise ValueError(
            "x has one value per channel; batch statistics need more than one (PyTorch: "
            f"'Expected more than 1 value per channel when training'); got shape {tuple(x.shape)}"
        )

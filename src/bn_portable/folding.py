"""``bn_portable.folding``: a batch norm's inference as a per-channel ``(scale, shift)``, safely.

Folding replaces ``(x - mean)·gamma/sqrt(variance + epsilon) + beta`` by ``x·scale + shift``
(and, in ``bn_portable.torch.fold_into``, multiplies ``scale`` into the preceding layer's
weights). The values are computed in float64 and rounded once to the target dtype, and
a ``FoldReport`` names the channels where the folded form is less accurate than the
unfolded one in that dtype: where ``|mean|/sigma`` is large (``x·scale`` and ``shift``
nearly cancel), where scale or shift overflow, or where the scale is subnormal.

One formula serves every convention. At inference TensorFlow (``tf.nn.batch_normalization``,
the fused kernel, Keras, tf-slim), PyTorch, Flax and ONNX all compute
``(x - mean)·gamma/sqrt(variance + epsilon) + beta`` with their stored statistics; they
differ in how those statistics were accumulated in training (PyTorch's running variance
is Bessel-corrected, TensorFlow's non-fused layer's is not) and in the default epsilon,
not in how they are used. Pass the stored moving (running) mean and variance and the
epsilon the model was built with. Array-API: NumPy, CuPy, PyTorch, JAX (with
``jax_enable_x64``), Dask and array-api-strict arrays; the backend must hold float64.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._fold_kernels import FORMATS, FloatFormat, fold, risks
from ._lib import _checks
from ._lib._dtypes import dtype_name
from ._lib._typing import Namespace
from ._tf._state import BatchNormState

#: The reasons a channel is at risk when folded, in the order reports list them.
RISKS = ("cancellation", "overflow", "subnormal", "nonfinite")


@dataclass(frozen=True)
class FoldReport:
    """Which channels a fold into ``dtype`` puts at risk, and why (per-channel arrays).

    Attributes
    ----------
    dtype:
        The target dtype's name (``"float16"``...).
    max_ulps, sigmas:
        The thresholds the report was made with.
    ulps:
        float64, per channel: the estimated error the fold adds, in ulps of the
        channel's largest output ``|beta| + sigmas·|gamma|``, for inputs within
        ``mean ± sigmas·sigma`` (inf where the fold cannot be represented).
    cancellation:
        ``ulps > max_ulps``: ``x·scale`` and ``shift`` nearly cancel (large ``|mean|/sigma``).
    overflow:
        The scale, the shift (or, for a layer, a folded weight or bias) is finite in
        float64 but not in ``dtype``.
    subnormal:
        The scale (or a folded weight) is subnormal or zero in ``dtype`` where the exact
        value is not, or a subnormal shift loses half an ulp of the output or more.
    nonfinite:
        The statistics give no finite fold (NaN or infinite values, ``variance + epsilon <= 0``).
    variance_overflow:
        Not a risk of folding: the running variance does not fit ``dtype``, so the
        *unfolded* batch norm run in ``dtype`` would fail (float16 above 65504);
        the fold, computed in float64, is the remedy.
    """

    dtype: str
    max_ulps: float
    sigmas: float
    ulps: Any
    cancellation: Any
    overflow: Any
    subnormal: Any
    nonfinite: Any
    variance_overflow: Any

    @property
    def at_risk(self) -> Any:
        """Boolean array: the channels with any of the four risks."""
        return self.cancellation | self.overflow | self.subnormal | self.nonfinite

    def channels(self) -> tuple[int, ...]:
        """The indices of the channels at risk (reads the values: not under ``jax.jit``)."""
        return tuple(sorted(self.reasons()))

    def reasons(self) -> dict[int, tuple[str, ...]]:
        """``{channel: reasons}`` for every channel at risk (reads the values)."""
        found: dict[int, tuple[str, ...]] = {}
        masks = {name: _as_bools(getattr(self, name)) for name in RISKS}
        for channel in range(len(masks["cancellation"])):
            names = tuple(name for name in RISKS if masks[name][channel])
            if names:
                found[channel] = names
        return found

    def describe(self, limit: int = 10) -> str:
        """One line per channel at risk (at most ``limit``), with the estimated ulps."""
        reasons = self.reasons()
        ulps = [float(value) for value in _as_list(self.ulps)]
        lines = [
            f"channel {channel}: {', '.join(names)}"
            + (f" ({ulps[channel]:.3g} ulps)" if "cancellation" in names else "")
            for channel, names in list(reasons.items())[:limit]
        ]
        if len(reasons) > limit:
            lines.append(f"... and {len(reasons) - limit} more")
        head = f"{len(reasons)} of {len(ulps)} channels at risk when folded into {self.dtype}"
        return "\n".join([head + (":" if lines else ""), *lines])

    def __str__(self) -> str:
        return self.describe()


class Folded(NamedTuple):
    """What ``fold_batch_norm`` returns: ``y = x·scale + shift``, and the risks."""

    scale: Any
    shift: Any
    report: FoldReport


def fold_batch_norm(
    mean: Any,
    variance: Any,
    *,
    epsilon: float,
    gamma: Any = None,
    beta: Any = None,
    dtype: Any = None,
    max_ulps: float = 8.0,
    sigmas: float = 3.0,
) -> Folded:
    """A batch norm's inference as ``y = x·scale + shift``, rounded once to ``dtype``.

    Parameters
    ----------
    mean, variance:
        The stored moving (running) statistics, shape ``(C,)``, a real floating dtype.
    epsilon:
        The batch norm's epsilon (keyword: conventions' defaults differ, 1e-3 in
        TensorFlow and Keras, 1e-5 in PyTorch, Flax and ONNX).
    gamma, beta:
        The scale and offset, shape ``(C,)``; None means 1 and 0.
    dtype:
        The dtype of ``scale`` and ``shift``: a dtype of the arrays' library or a name
        (``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"``); ``mean``'s by default.
    max_ulps:
        A channel whose fold adds more than this many ulps of its largest output is
        flagged (``report.cancellation``).
    sigmas:
        The inputs the estimate covers: ``mean ± sigmas·sqrt(variance + epsilon)``.

    Returns
    -------
    Folded
        ``(scale, shift, report)``. ``scale = gamma/sqrt(variance + epsilon)`` and
        ``shift = beta - mean·scale`` computed in float64 from the inputs and rounded
        once (to nearest, ties to even), so each is the ``dtype`` number nearest the
        exact value. ``report`` is a ``FoldReport``.

    Examples
    --------
    >>> import numpy as np
    >>> from bn_portable.folding import fold_batch_norm
    >>> mean = np.array([0.5, 300.0, 2.0], np.float32)
    >>> variance = np.array([4.0, 9.0, 1e6], np.float32)     # 1e6 does not fit float16
    >>> scale, shift, report = fold_batch_norm(mean, variance, epsilon=1e-3, dtype="float16")
    >>> scale.dtype, report.channels()
    (dtype('float16'), (1,))
    >>> print(report)
    1 of 3 channels at risk when folded into float16:
    channel 1: cancellation (25.7 ulps)
    >>> report.variance_overflow    # channel 2: the unfolded float16 batch norm would fail
    array([False, False,  True])
    """
    xp = _checks.namespace(mean=mean, variance=variance, gamma=gamma, beta=beta)
    channels = _check_statistics(mean, variance, gamma, beta, xp)
    eps = _checks.check_real("epsilon", epsilon, low=0.0)
    limit = _checks.check_real("max_ulps", max_ulps, low=0.0, allow=(math.inf,))
    spread = _checks.check_real("sigmas", sigmas, low=0.0, low_open=True)
    target, fmt = resolve_dtype(dtype, mean.dtype, xp)
    wide = [None if v is None else as_float64(v, xp) for v in (mean, variance, gamma, beta)]
    scale, shift, sigma = fold(wide[0], wide[1], wide[2], wide[3], eps, xp=xp)
    found = risks(wide[0], wide[1], sigma, wide[2], wide[3], scale, shift, fmt, limit, spread, xp=xp)
    del channels  # checked; the arrays carry it
    return Folded(
        xp.astype(found["scale"], target), xp.astype(found["shift"], target),
        make_report(found, fmt, limit, spread),
    )


def fold_state(
    state: BatchNormState,
    *,
    epsilon: float,
    dtype: Any = None,
    max_ulps: float = 8.0,
    sigmas: float = 3.0,
) -> Folded:
    """``fold_batch_norm`` of a ``BatchNormState``'s moving statistics, gamma and beta.

    The moving mean and variance are what every TensorFlow layer path uses at inference
    (with ``zero_debias_moving_mean`` the debiased ``moving_mean``; renorm's statistics
    are for training only). Pass the layer's ``epsilon``.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> from bn_portable.folding import fold_state
    >>> state = bn.BatchNormState(beta=np.zeros(2), gamma=np.full(2, 2.0),
    ...                           moving_mean=np.array([1.0, -1.0]), moving_variance=np.ones(2))
    >>> scale, shift, report = fold_state(state, epsilon=0.0)
    >>> print(scale, shift, report.channels())
    [2. 2.] [-2.  2.] ()
    """
    if not isinstance(state, BatchNormState):
        raise TypeError(f"state must be a BatchNormState, got {type(state).__name__}")
    if state.moving_mean is None or state.moving_variance is None:
        raise ValueError("state must have a moving_mean and a moving_variance to fold")
    return fold_batch_norm(
        state.moving_mean, state.moving_variance, epsilon=epsilon, gamma=state.gamma,
        beta=state.beta, dtype=dtype, max_ulps=max_ulps, sigmas=sigmas,
    )


def resolve_dtype(dtype: Any, default: Any, xp: Namespace) -> tuple[Any, FloatFormat]:
    """The library's dtype for ``dtype`` (a dtype, a name or None for ``default``), and its format."""
    chosen = default if dtype is None else dtype
    name = chosen if isinstance(chosen, str) else dtype_name(chosen)
    if name not in FORMATS:
        raise TypeError(
            f"dtype must be one of {', '.join(FORMATS)} (a name or the library's dtype), got {chosen!r}"
        )
    if not isinstance(chosen, str):
        return chosen, FORMATS[name]
    found = getattr(xp, name, None)
    if found is None:
        raise TypeError(
            f"dtype {name!r}: this array library has no such dtype (NumPy has no bfloat16: "
            "pass dtype=ml_dtypes.bfloat16, or fold PyTorch or JAX arrays)"
        )
    return found, FORMATS[name]


def as_float64(value: Any, xp: Namespace) -> Any:
    """``value`` as float64, refused where the library cannot hold float64."""
    with warnings.catch_warnings():
        # JAX without jax_enable_x64 warns and gives float32: refused just below.
        warnings.simplefilter("ignore")
        wide = xp.astype(value, xp.float64)
    if dtype_name(wide.dtype) != "float64":
        raise TypeError(
            "folding computes in float64, which this array library does not hold here "
            "(JAX: jax.config.update('jax_enable_x64', True); Apple MPS: fold on the CPU)"
        )
    return wide


def make_report(found: dict[str, Any], fmt: FloatFormat, max_ulps: float, sigmas: float) -> FoldReport:
    """A ``FoldReport`` from ``risks``' masks."""
    return FoldReport(
        dtype=fmt.name, max_ulps=max_ulps, sigmas=sigmas, ulps=found["ulps"],
        cancellation=found["cancellation"], overflow=found["overflow"],
        subnormal=found["subnormal"], nonfinite=found["nonfinite"],
        variance_overflow=found["variance_overflow"],
    )


def _check_statistics(mean: Any, variance: Any, gamma: Any, beta: Any, xp: Namespace) -> int:
    """Every given array is real floating and of the shape ``(C,)``; returns ``C``."""
    _checks.check_floating("mean", mean, xp)
    _checks.check_rank("mean", mean, (1,))
    channels = int(mean.shape[0])
    for name, value in (("variance", variance), ("gamma", gamma), ("beta", beta)):
        if value is not None:
            _checks.check_floating(name, value, xp)
            _checks.check_shape(name, value, (channels,), "one value per channel, as mean")
    return channels


def _as_bools(mask: Any) -> list[bool]:
    return [bool(value) for value in _as_list(mask)]


def _as_list(array: Any) -> list[Any]:
    """The values of a 1-d array of any library (Dask computes; the report is read offline)."""
    compute = getattr(array, "compute", None)
    if callable(compute) and not hasattr(array, "tolist"):
        array = compute()
    if hasattr(array, "tolist"):
        values: list[Any] = array.tolist()
        return values
    return [array[i] for i in range(array.shape[0])]


__all__ = ["FoldReport", "Folded", "fold_batch_norm", "fold_state"]

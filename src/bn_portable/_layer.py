"""``batch_norm``: the layer of ``tf.contrib.layers.batch_norm`` as a pure function.

TensorFlow's layer is three implementations behind one signature, and they
round differently, so the first job of every call is to pick the one TensorFlow
would run (``plan_layer``):

- ``slim_fused``: tf-slim's own fused path (fused, no weights, no renorm, rank
  2 or 4, and rank 2 or zero-debias). Fused kernel, float32 variables.
- ``keras_fused``: the Keras layer with the fused kernel (fused, no weights, no
  zero-debias, no renorm, rank 4 or 5, a dtype the kernel takes).
- ``keras_layer``: the Keras layer without the kernel (every other call without
  weights or zero-debias, renorm included). float32 variables for half inputs.
- ``legacy``: tf-slim's own composite (batch_weights or zero-debias without the
  fused kernel). Variables in the input's dtype, float16 included.

The fused kernel moves the moving variance toward the Bessel-corrected batch
variance; every other path toward the biased one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import _layout
from ._cross_replica import fused_training_global, global_moments
from ._lib import _call_cache, _checks
from ._lib._autodiff import stop_gradient
from ._lib._compat import device
from ._lib._dtypes import compute_dtype, dtype_name, scalar, tf_constant
from ._lib._typing import ArrayT, CrossReplicaSum
from ._moments import batch_moments, batch_weighted_moments
from ._moving_averages import moving_average, zero_debiased_average
from ._nonfinite import keep_state_unless_finite
from ._normalize import (
    FUSED_INPUT_DTYPES,
    bessel_correction,
    fused_inference,
    fused_training_core,
    normalize,
)
from ._state import INITIALIZED_FIELDS, BatchNormState, check_state, initial_state, required_fields

RENORM_CLIPPING_KEYS = ("rmin", "rmax", "dmax")


@dataclass(frozen=True)
class LayerOptions:
    """The Python-level options of one call, validated."""

    decay: float
    center: bool
    scale: bool
    epsilon: float
    activation_fn: Callable[[Any], Any] | None
    param_initializers: Mapping[str, Any]
    is_training: bool
    fused: bool
    data_format: str
    zero_debias_moving_mean: bool
    renorm: bool
    renorm_clipping: Mapping[str, float]
    renorm_decay: float
    #: Sum over replicas of one small array (synchronized batch norm), or None.
    cross_replica_sum: Callable[[Any], Any] | None = None
    skip_nonfinite: bool = False

    @property
    def signature(self) -> Hashable | None:
        """These options as a hashable key of the call cache (None: not remembered).

        Computed once per options object (which ``layer_options`` remembers);
        not ``functools.cached_property``, whose lock (Python 3.11) the
        compiler cannot trace.
        """
        try:
            return self.__dict__["_signature"]  # type: ignore[no-any-return]
        except KeyError:
            key = _call_cache.options_signature(self)
            self.__dict__["_signature"] = key  # frozen: set behind the dataclass's back
            return key


@dataclass(frozen=True)
class LayerPlan:
    """Which TensorFlow implementation runs, and where the channels are."""

    path: str
    channel: int
    axes: tuple[int, ...]
    channels: int
    state_dtype: Any
    fields: tuple[str, ...]

    @property
    def fused_kernel(self) -> bool:
        return self.path in ("slim_fused", "keras_fused")


class Normalization(NamedTuple):
    """What one step normalized with; the backward pass starts from it.

    ``mean`` and ``variance`` are per channel (the batch's biased statistics in
    training, the moving ones in inference); ``gamma`` and ``beta`` are the
    layer's parameters (``None`` where absent); ``r`` and ``d`` the renorm
    corrections (``None`` without renorm or in inference).
    """

    mean: Any
    variance: Any
    gamma: Any
    beta: Any
    r: Any = None
    d: Any = None


def batch_norm(
    x: ArrayT,
    state: BatchNormState | None = None,
    *,
    decay: float = 0.999,
    center: bool = True,
    scale: bool = False,
    epsilon: float = 0.001,
    activation_fn: Callable[[Any], Any] | None = None,
    param_initializers: Mapping[str, Any] | None = None,
    is_training: bool = True,
    batch_weights: Any = None,
    fused: bool = False,
    data_format: str = "NHWC",
    zero_debias_moving_mean: bool = False,
    renorm: bool = False,
    renorm_clipping: Mapping[str, float] | None = None,
    renorm_decay: float = 0.99,
    cross_replica_sum: CrossReplicaSum | None = None,
    skip_nonfinite: bool = False,
) -> tuple[ArrayT, BatchNormState]:
    """One call of ``tf.contrib.layers.batch_norm``; returns ``(y, new_state)``.

    ``state=None`` creates the variables from ``x`` as TensorFlow does on the
    first call (``param_initializers`` may give beta, gamma, moving_mean and
    moving_variance as arrays, numbers or callables ``(shape, dtype)``). In
    training the batch is normalized with its own mean and biased variance and
    the moving statistics move toward it; in inference the moving statistics
    are used and the state comes back unchanged. Nothing is mutated.

    ``cross_replica_sum`` synchronizes replicas that each hold one shard of a
    global batch: a callable returning the sum of one small array over every
    replica (``bn_portable.distributed`` has them for torch.distributed and
    JAX). Training statistics, batch weights included, are then the global
    batch's, and the moving statistics are identical on every replica.

    ``skip_nonfinite=True`` (not in TensorFlow, which lets one bad batch turn
    the moving statistics NaN for good) keeps the state of a training step whose
    batch statistics are not finite, counting it in ``state.skipped_steps``.

    See the user guide for every argument; other names and defaults are TensorFlow's.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]], dtype=np.float32)
    >>> y, state = bn.batch_norm(x, decay=0.9)  # creates the variables, one training step
    >>> print(y)
    [[-0.9995004 -0.999995 ]
     [ 0.9995005  0.999995 ]]
    >>> print(state.moving_mean, state.moving_variance)  # moved 10% toward [2, 20], [1, 100]
    [0.2 2. ] [ 1.       10.900001]
    >>> _, fused = bn.batch_norm(x, decay=0.9, fused=True)  # the fused kernel: Bessel-corrected
    >>> print(fused.moving_variance)
    [ 1.1 20.9]
    >>> y, _ = bn.batch_norm(x, state, decay=0.9, is_training=False)  # the moving statistics
    >>> print(y)
    [[0.7996003 2.4230187]
     [2.7986012 8.480565 ]]
    """
    options = layer_options(
        decay=decay, center=center, scale=scale, epsilon=epsilon, activation_fn=activation_fn,
        param_initializers=param_initializers, is_training=is_training, fused=fused,
        data_format=data_format, zero_debias_moving_mean=zero_debias_moving_mean,
        renorm=renorm, renorm_clipping=renorm_clipping, renorm_decay=renorm_decay,
        cross_replica_sum=cross_replica_sum, weighted=batch_weights is not None,
        skip_nonfinite=skip_nonfinite,
    )
    xp, plan, state = prepare(x, state, batch_weights, options)
    y, new_state, _ = layer_step(x, state, batch_weights, options, plan, xp)
    if options.activation_fn is not None:
        y = options.activation_fn(y)
    return y, new_state


def layer_options(
    *,
    weighted: bool,
    cross_replica_sum: Callable[[Any], Any] | None = None,
    skip_nonfinite: bool = False,
    **arguments: Any,
) -> LayerOptions:
    """Validate the Python-level options of ``batch_norm``.

    The two options TensorFlow does not have default here as in ``batch_norm``,
    so callers that build TensorFlow's options alone need not name them.

    The validated options are remembered per exact argument values (types
    included, so ``1`` and ``True`` stay apart): a training loop passes the
    same options on every call, and checking them again is most of the cost of
    a small call. Arguments that are not hashable plain values (initializer
    mappings, a clipping dictionary of arrays) are checked every time.
    """
    arguments.update(cross_replica_sum=cross_replica_sum, skip_nonfinite=skip_nonfinite)
    return _call_cache.remember(  # type: ignore[no-any-return]
        _arguments_key(weighted, arguments), lambda: _validate_options(weighted, arguments)
    )


def _arguments_key(weighted: bool, arguments: Mapping[str, Any]) -> Hashable | None:
    """The raw arguments as a key: names, values and their types; None if one is not plain."""
    if _call_cache.tracing():
        return None
    values = list(arguments.values())
    for index, name in enumerate(arguments):
        if name in _MAPPING_OPTIONS and values[index] is not None:
            mapping = values[index]
            if name == "param_initializers" and mapping:
                return None  # arrays or callables: validated (and copied) every call
            if not isinstance(mapping, Mapping):
                return None  # let validation say what is wrong
            items = tuple(mapping.items())
            if not all(type(v) in (int, float, bool) or v is None for _, v in items):
                return None
            values[index] = items
    return ("layer_options", weighted, tuple(arguments), tuple(values), tuple(map(type, values)))


_MAPPING_OPTIONS = ("param_initializers", "renorm_clipping")


def _validate_options(weighted: bool, arguments: dict[str, Any]) -> LayerOptions:
    arguments = dict(arguments)
    for name in (
        "center", "scale", "is_training", "fused", "zero_debias_moving_mean", "renorm",
        "skip_nonfinite",
    ):
        _checks.check_bool(name, arguments[name])
    arguments["decay"] = _checks.check_real("decay", arguments["decay"], low=0.0, high=1.0)
    arguments["renorm_decay"] = _checks.check_real(
        "renorm_decay", arguments["renorm_decay"], low=0.0, high=1.0
    )
    # epsilon = 0 as in TensorFlow: a channel of zero variance then normalizes to NaN.
    arguments["epsilon"] = _checks.check_real("epsilon", arguments["epsilon"], low=0.0)
    _checks.check_callable("activation_fn", arguments["activation_fn"])
    _checks.check_callable("cross_replica_sum", arguments["cross_replica_sum"])
    _checks.check_choice("data_format", arguments["data_format"], _layout.LAYER_DATA_FORMATS)
    arguments["param_initializers"] = _param_initializers(arguments["param_initializers"])
    arguments["renorm_clipping"] = _renorm_clipping(
        arguments["renorm_clipping"], arguments["renorm"]
    )
    if arguments["renorm"] and (weighted or arguments["zero_debias_moving_mean"]):
        raise ValueError(
            "renorm=True cannot be combined with batch_weights or "
            "zero_debias_moving_mean=True (TensorFlow rejects the combination too)"
        )
    return LayerOptions(**arguments)


def prepare(x: Any, state: Any, batch_weights: Any, options: Any) -> Any:
    """Namespace, plan and (initial or checked) state for one call.

    With a given state, the checks and the plan depend only on the arguments'
    types, shapes, dtypes, devices and the options, so they are remembered per
    signature (``_call_cache``): a repeated call skips them.
    """
    if state is None or type(state) is not BatchNormState or options.param_initializers:
        return _prepare(x, state, batch_weights, options)
    arrays = _call_cache.signature(x, batch_weights, *state)
    if arrays is None:  # an array type without a signature, or being compiled
        return _prepare(x, state, batch_weights, options)
    option_key = options.signature
    key = None if option_key is None else ("batch_norm", option_key, arrays)
    xp, plan = _call_cache.remember(key, lambda: _prepare(x, state, batch_weights, options)[:2])
    return xp, plan, state


def _prepare(x: Any, state: Any, batch_weights: Any, options: Any) -> Any:
    xp = _checks.namespace(x=x, batch_weights=batch_weights)
    _checks.check_floating("x", x, xp)
    rank = _checks.check_rank("x", x, (2, 3, 4, 5))
    _checks.check_known_shape("x", x)
    if batch_weights is not None:
        _checks.check_device("batch_weights", batch_weights, device(x))
        _checks.check_real_dtype("batch_weights", batch_weights, xp)
        _checks.check_shape("batch_weights", batch_weights, (x.shape[0],), "one weight per sample of x")
    plan = plan_layer(options, rank, x, batch_weights is not None, xp)
    if options.renorm and dtype_name(plan.state_dtype) == "float64":
        raise TypeError(
            "renorm=True does not run on float64 in TensorFlow (tf-keras compares a "
            "float64 variable with the float32 sqrt(epsilon)), so there is nothing "
            "to reproduce; use float32 x"
        )
    if state is None:
        state = initial_state(
            plan.fields, plan.channels, plan.state_dtype, options.param_initializers, xp, device(x)
        )
    else:
        if options.param_initializers:
            raise ValueError(
                "param_initializers is only used to create the state (state=None); "
                "it was given together with a state"
            )
        check_state(
            state, plan.fields, plan.channels, plan.state_dtype, xp, device(x), _describe(options)
        )
    return xp, plan, state


def plan_layer(options: LayerOptions, rank: int, x: Any, weighted: bool, xp: Any) -> LayerPlan:
    """Pick the implementation TensorFlow runs for this call (see the module doc)."""
    dtype_is_fusable = dtype_name(x.dtype) in FUSED_INPUT_DTYPES
    possible_to_fuse = not weighted and not options.renorm and rank in (2, 4)
    if options.fused and possible_to_fuse and (options.zero_debias_moving_mean or rank == 2):
        if not dtype_is_fusable:
            raise TypeError(
                f"x has dtype {dtype_name(x.dtype)}, but fused=True with a rank-{rank} input"
                f"{' and zero_debias_moving_mean=True' if options.zero_debias_moving_mean else ''} "
                "runs TensorFlow's fused kernel, which takes float16, bfloat16 or float32 "
                "only (TensorFlow fails here too); pass fused=False"
            )
        path, state_dtype = "slim_fused", xp.float32
    elif not weighted and not options.zero_debias_moving_mean:
        fused_kernel = options.fused and rank in (4, 5) and not options.renorm and dtype_is_fusable
        path, state_dtype = ("keras_fused" if fused_kernel else "keras_layer"), compute_dtype(xp, x.dtype)
    else:
        path, state_dtype = "legacy", x.dtype
    channel = 1 if options.data_format == "NCHW" else rank - 1
    fields = required_fields(
        center=options.center,
        scale=options.scale,
        zero_debias=options.zero_debias_moving_mean,
        renorm=options.renorm,
        skip_nonfinite=options.skip_nonfinite,
    )
    return LayerPlan(
        path=path,
        channel=channel,
        axes=_layout.reduction_axes(rank, channel),
        channels=x.shape[channel],
        state_dtype=state_dtype,
        fields=fields,
    )


def layer_step(x: Any, state: Any, batch_weights: Any, options: Any, plan: Any, xp: Any) -> Any:
    """``(y before activation, new_state, Normalization)`` for one call."""
    if plan.fused_kernel:
        y, new_state, used = _fused_step(x, state, options, plan, xp)
    elif plan.path == "keras_layer":
        y, new_state, used = _keras_step(x, state, options, plan, xp)
    else:
        y, new_state, used = _legacy_step(x, state, batch_weights, options, plan, xp)
    if options.skip_nonfinite and options.is_training:
        new_state = keep_state_unless_finite(state, new_state, used.mean, used.variance, xp)
    return y, _without_gradient(new_state, state, xp), used


def _without_gradient(new_state: Any, state: Any, xp: Any) -> Any:
    """TensorFlow's variable updates carry no gradient; neither do ours."""
    return new_state._replace(
        **{
            field: stop_gradient(getattr(new_state, field), xp)
            for field in _STATISTICS
            if getattr(new_state, field) is not getattr(state, field)
        }
    )


_STATISTICS = tuple(f for f in BatchNormState._fields if f not in ("beta", "gamma"))


def _fused_step(x: Any, state: Any, options: Any, plan: Any, xp: Any) -> Any:
    """The fused kernel; the moving variance gets the Bessel-corrected variance."""
    dev = device(x)
    # Constant γ = 1 and β = 0 only where the layer has no such parameter.
    gamma = state.gamma if options.scale else xp.ones((plan.channels,), dtype=xp.float32, device=dev)
    beta = state.beta if options.center else xp.zeros((plan.channels,), dtype=xp.float32, device=dev)
    if not options.is_training:
        y = fused_inference(
            x, gamma, beta, state.moving_mean, state.moving_variance, options.epsilon, plan.channel, xp
        )
        return y, state, Normalization(state.moving_mean, state.moving_variance, state.gamma, state.beta)
    if options.cross_replica_sum is None:
        y, batch_mean, biased_variance, count = fused_training_core(
            x, gamma, beta, options.epsilon, plan.channel, xp
        )
        bessel = bessel_correction(count, xp, dev)
    else:
        y, batch_mean, biased_variance, bessel = fused_training_global(
            x, gamma, beta, options.epsilon, plan.channel, options.cross_replica_sum, xp
        )
    unbiased_variance = biased_variance * bessel
    # tf-slim's fused path rounds 1 - decay in double precision; the Keras
    # layer's fused path makes decay a float32 tensor first.
    rounding = "python" if plan.path == "slim_fused" else "float32"
    new_state = _update_moving_mean(state, batch_mean, options, rounding, xp)._replace(
        moving_variance=moving_average(
            state.moving_variance, unbiased_variance, options.decay, rounding, xp
        )
    )
    return y, new_state, Normalization(batch_mean, biased_variance, state.gamma, state.beta)


def _keras_step(x: Any, state: Any, options: Any, plan: Any, xp: Any) -> Any:
    """The Keras layer without the fused kernel, renorm included."""
    rank = x.ndim
    gamma, beta = state.gamma, state.beta
    # The layer casts half inputs to float32 (its compute dtype), normalizes
    # there and rounds y once; other dtypes are their own compute dtype.
    x_compute = xp.astype(x, plan.state_dtype)
    if options.is_training:
        mean, variance = _per_channel_moments(x_compute, plan, options, xp)
        new_state = _update_moving_mean(state, mean, options, "python", xp)
        if options.renorm:
            r, d, new_state = _renorm_step(mean, variance, new_state, state, options, xp)
            # r and d are constants for the gradient (tf.stop_gradient in tf-keras).
            r, d = stop_gradient(r, xp), stop_gradient(d, xp)
            scale, offset = _compose(r, d, gamma, beta)
            used = Normalization(mean, variance, gamma, beta, r, d)
        else:
            new_state = new_state._replace(
                moving_variance=moving_average(
                    state.moving_variance, variance, options.decay, "python", xp
                )
            )
            scale, offset = gamma, beta
            used = Normalization(mean, variance, gamma, beta)
    else:
        mean, variance, scale, offset = state.moving_mean, state.moving_variance, gamma, beta
        new_state, used = state, Normalization(mean, variance, gamma, beta)
    mean_b, variance_b, offset_b, scale_b = (
        None if value is None else _layout.per_channel(value, rank, plan.channel, xp)
        for value in (mean, variance, offset, scale)
    )
    y = normalize(x_compute, mean_b, variance_b, offset_b, scale_b, options.epsilon, xp)
    return xp.astype(y, x.dtype), new_state, used


def _legacy_step(x: Any, state: Any, batch_weights: Any, options: Any, plan: Any, xp: Any) -> Any:
    """tf-slim's own composite: weighted moments and zero-debias, input-dtype variables."""
    rank = x.ndim
    if options.is_training:
        if batch_weights is None:
            mean, variance = _per_channel_moments(x, plan, options, xp)
        else:
            weights = xp.reshape(batch_weights, (-1,) + (1,) * (rank - 1))
            if options.cross_replica_sum is None:
                statistics = batch_weighted_moments(x, plan.axes, weights, xp)
            else:
                statistics = global_moments(x, plan.axes, options.cross_replica_sum, xp, weights)
            mean, variance = (xp.reshape(s, (-1,)) for s in statistics)
        # tf.nn.(weighted_)moments rounds half-precision statistics back to x's dtype.
        mean, variance = xp.astype(mean, x.dtype), xp.astype(variance, x.dtype)
        new_state = _update_moving_mean(state, mean, options, "python", xp)._replace(
            moving_variance=moving_average(
                state.moving_variance, variance, options.decay, "python", xp
            )
        )
    else:
        mean, variance, new_state = state.moving_mean, state.moving_variance, state
    mean_b, variance_b, offset_b, scale_b = (
        None if value is None else _layout.per_channel(value, rank, plan.channel, xp)
        for value in (mean, variance, state.beta, state.gamma)
    )
    y = normalize(x, mean_b, variance_b, offset_b, scale_b, options.epsilon, xp)
    return y, new_state, Normalization(mean, variance, state.gamma, state.beta)


def _per_channel_moments(x: Any, plan: Any, options: Any, xp: Any) -> Any:
    if options.cross_replica_sum is None:
        mean, variance = batch_moments(x, plan.axes, xp)
    else:
        mean, variance = global_moments(x, plan.axes, options.cross_replica_sum, xp)
    return xp.reshape(mean, (-1,)), xp.reshape(variance, (-1,))


def _update_moving_mean(state: Any, batch_mean: Any, options: Any, rounding: Any, xp: Any) -> Any:
    """The moving mean's update, zero-debiased when asked."""
    if not options.zero_debias_moving_mean:
        return state._replace(
            moving_mean=moving_average(state.moving_mean, batch_mean, options.decay, rounding, xp)
        )
    unbiased, biased, step = zero_debiased_average(
        state.moving_mean_biased, state.local_step, batch_mean, options.decay, xp
    )
    return state._replace(moving_mean=unbiased, moving_mean_biased=biased, local_step=step)


def _renorm_step(
    mean: Any, variance: Any, new_state: Any, state: Any, options: Any, xp: Any
) -> Any:
    """Batch renormalization (Ioffe 2017) as tf-keras implements it.

    r and d use the renorm statistics from before this step; the moving
    variance is derived from the moving standard deviation, not averaged.
    """
    dev = device(mean)
    epsilon = options.epsilon
    stddev = xp.sqrt(variance + epsilon)
    # tf.sqrt(epsilon) is a float32 tensor: TensorFlow rounds epsilon to float32 here.
    floor = xp.astype(xp.sqrt(tf_constant(xp, epsilon, xp.float32, dev)), state.renorm_stddev.dtype)
    renorm_stddev = xp.maximum(state.renorm_stddev, floor)
    r = stddev / renorm_stddev
    d = (mean - state.renorm_mean) / renorm_stddev
    clipping = options.renorm_clipping
    if "rmin" in clipping:
        r = xp.maximum(r, scalar(xp, clipping["rmin"], r.dtype, dev))
    if "rmax" in clipping:
        r = xp.minimum(r, scalar(xp, clipping["rmax"], r.dtype, dev))
    if "dmax" in clipping:
        d = xp.maximum(d, scalar(xp, -clipping["dmax"], d.dtype, dev))
        d = xp.minimum(d, scalar(xp, clipping["dmax"], d.dtype, dev))
    moving_stddev = moving_average(state.moving_stddev, stddev, options.decay, "python", xp)
    new_state = new_state._replace(
        renorm_mean=moving_average(state.renorm_mean, mean, options.renorm_decay, "python", xp),
        renorm_stddev=moving_average(state.renorm_stddev, stddev, options.renorm_decay, "python", xp),
        moving_stddev=moving_stddev,
        moving_variance=xp.maximum(moving_stddev * moving_stddev - epsilon, xp.zeros_like(moving_stddev)),
    )
    return r, d, new_state


def _compose(r: Any, d: Any, gamma: Any, beta: Any) -> Any:
    """``(x̂·r + d)·γ + β`` as one affine map: scale ``r·γ``, offset ``d·γ + β``."""
    scale, offset = r, d
    if gamma is not None:
        scale, offset = scale * gamma, offset * gamma
    if beta is not None:
        offset = offset + beta
    return scale, offset


def _param_initializers(value: Any) -> Mapping[str, Any]:
    return _checks.check_options_dict("param_initializers", value, INITIALIZED_FIELDS)


def _renorm_clipping(value: Any, renorm: bool) -> Mapping[str, float]:
    """The finite bounds of ``renorm_clipping``; None and infinite ones mean no bound.

    As in TensorFlow, ``rmax`` and ``dmax`` may be ``inf`` and ``rmin`` ``-inf``
    or any number <= 0 (r is a ratio of standard deviations, never negative). A
    bound TensorFlow would apply to meaningless effect is refused: ``rmin = inf``
    (every r becomes inf), a negative ``dmax`` or ``rmin > rmax`` (empty ranges),
    NaN.
    """
    if value is not None and not renorm:
        raise ValueError("renorm_clipping is given but renorm=False; pass renorm=True or drop it")
    value = _checks.check_options_dict("renorm_clipping", value, RENORM_CLIPPING_KEYS)
    clipping = {}
    for key in RENORM_CLIPPING_KEYS:
        bound = value.get(key)
        if bound is None:
            continue
        label = f"renorm_clipping[{key!r}]"
        if key == "rmin":
            lowest = _checks.check_real(label, bound, low=-math.inf, high=math.inf, allow=(-math.inf,))
            if lowest != -math.inf:
                clipping[key] = lowest
        else:
            highest = _checks.check_real(label, bound, low=0.0, allow=(math.inf,))
            if highest != math.inf:
                clipping[key] = highest
    if clipping.get("rmin", 0.0) > clipping.get("rmax", math.inf):
        raise ValueError(
            f"renorm_clipping must have rmin <= rmax, got rmin={clipping['rmin']} "
            f"and rmax={clipping['rmax']}"
        )
    return clipping


def _describe(options: LayerOptions) -> str:
    flags = [
        f"center={options.center}",
        f"scale={options.scale}",
        f"zero_debias_moving_mean={options.zero_debias_moving_mean}",
        f"renorm={options.renorm}",
        f"skip_nonfinite={options.skip_nonfinite}",
    ]
    return "batch_norm(" + ", ".join(flags) + ")"


__all__ = ["batch_norm"]

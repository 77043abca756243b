"""Which of TensorFlow's four layer implementations runs, and the checks that decide it.

TensorFlow's layer is several implementations behind one signature, and they
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

The plan is a pure function of the options and the arguments' metadata, so
``prepare`` remembers it per metadata key (``_lib._call_cache``), and
``prepare_call`` the options and the plan of a public call together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from .._kernels._moving_averages import WeightRounding, number_weight
from .._lib import _call_cache, _checks, _layout
from .._lib._backends import metadata, torch_compiling
from .._lib._compat import device
from .._lib._dtypes import ComputeRule, compute_dtype, dtype_name
from .._lib._typing import Namespace
from ._fields import required_fields
from ._options import DEFAULTS, LayerOptions, layer_options, options_key
from ._state import BatchNormState, check_state, initial_state

#: TensorFlow's layer implementations (see the module doc).
Path: TypeAlias = Literal["slim_fused", "keras_fused", "keras_layer", "legacy"]

#: The dtypes TensorFlow's fused kernel takes.
FUSED_INPUT_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class LayerPlan:
    """Which TensorFlow implementation runs, and where the channels are."""

    path: Path
    channel: int
    axes: tuple[int, ...]
    channels: int
    state_dtype: Any
    fields: tuple[str, ...]
    #: ``1 − decay`` as the moving averages take it (``_moving_averages.number_weight``,
    #: rounded per ``weight_rounding(path)``) where that is a Python float: float32 and float64
    #: variables, planned eagerly (a plan made while PyTorch's compiler traces has no key,
    #: so it is never remembered for an eager call). None otherwise: the step makes it.
    decay_weight: float | None = None

    @property
    def fused_kernel(self) -> bool:
        return self.path in ("slim_fused", "keras_fused")


def weight_rounding(path: Path) -> WeightRounding:
    """Where a path rounds ``1 − decay``: the Keras layer's fused path makes decay a float32
    tensor first; tf-slim and the Keras layer's own updates round it in double precision."""
    return "float32" if path == "keras_fused" else "python"


def prepare_call(
    x: Any, state: BatchNormState | None, batch_weights: Any, mask: Any, option_values: tuple[Any, ...]
) -> tuple[LayerOptions, Namespace, LayerPlan, BatchNormState]:
    """Validated options, namespace, plan and state of one public call, its options' raw
    values given in ``DEFAULTS``' order.

    The options and the plan together are remembered per (option values, metadata)
    key: a repeated call of ``batch_norm`` makes one lookup, not one for its options
    and one for its plan; and asks once whether PyTorch's compiler traces (no key then).
    """
    weighted = batch_weights is not None

    def validated() -> LayerOptions:
        return layer_options(weighted=weighted, **dict(zip(DEFAULTS, option_values)))

    if state is not None and type(state) is BatchNormState and not torch_compiling():
        option_key = options_key(weighted, option_values, eager=True)
        arrays = None if option_key is None else metadata(x, batch_weights, mask, *state, eager=True)
        if arrays is not None:
            checked = state

            def plan_call() -> tuple[LayerOptions, Namespace, LayerPlan]:
                options = validated()
                return (options, *_prepare(x, checked, batch_weights, options, mask)[:2])

            options, xp, plan = _call_cache.remember(("layer call", option_key, arrays), plan_call)
            return options, xp, plan, state
    options = validated()
    return (options, *prepare(x, state, batch_weights, options, mask))


def prepare(
    x: Any, state: BatchNormState | None, batch_weights: Any, options: LayerOptions, mask: Any = None
) -> tuple[Namespace, LayerPlan, BatchNormState]:
    """Namespace, plan and (initial or checked) state for one call.

    With a given state, the checks and the plan are functions of the
    arguments' metadata and the options only, so they are remembered per
    metadata key, which is read afresh on every call.
    """
    if state is None or type(state) is not BatchNormState or options.param_initializers:
        return _prepare(x, state, batch_weights, options, mask)
    arrays = metadata(x, batch_weights, mask, *state)
    option_key = options.signature
    if arrays is None or option_key is None:  # no complete key: check in full
        return _prepare(x, state, batch_weights, options, mask)
    xp, plan = _call_cache.remember(
        ("batch_norm", option_key, arrays), lambda: _prepare(x, state, batch_weights, options, mask)[:2]
    )
    return xp, plan, state


def _prepare(
    x: Any, state: BatchNormState | None, batch_weights: Any, options: LayerOptions, mask: Any
) -> tuple[Namespace, LayerPlan, BatchNormState]:
    xp = _checks.namespace(x=x, batch_weights=batch_weights, mask=mask)
    _checks.check_floating("x", x, xp)
    rank = _checks.check_rank("x", x, (2, 3, 4, 5))
    _checks.check_known_shape("x", x)
    if batch_weights is not None:
        _checks.check_device("batch_weights", batch_weights, device(x))
        _checks.check_real_dtype("batch_weights", batch_weights, xp)
        _checks.check_shape("batch_weights", batch_weights, (x.shape[0],), "one weight per sample of x")
    plan = plan_layer(options, rank, x, batch_weights is not None, xp)
    if mask is not None:
        _check_mask(mask, x, batch_weights, options, plan, xp)
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
        check_state(state, plan.fields, plan.channels, plan.state_dtype, xp, device(x), options.describe())
    return xp, plan, state


def _check_mask(
    mask: Any, x: Any, batch_weights: Any, options: LayerOptions, plan: LayerPlan, xp: Namespace
) -> None:
    """A Keras mask: x's shape without the channel axis, on the Keras layer's composite path.

    tf-keras, whose layer is the only TensorFlow one with a mask, computes
    masked statistics on its composite path only (its fused kernel ignores the
    mask, with a warning); tf-slim's paths (batch weights, zero-debias) have
    none. Refused there rather than ignored or invented.
    """
    _checks.check_device("mask", mask, device(x))
    _checks.check_real_dtype("mask", mask, xp)
    expected = tuple(n for axis, n in enumerate(x.shape) if axis != plan.channel)
    _checks.check_shape(
        "mask", mask, expected,
        f"x's shape without its channel axis {plan.channel} ({options.data_format}; Keras' mask for channels-last input)",
    )
    if batch_weights is not None:
        raise ValueError(
            "mask and batch_weights cannot be combined (no TensorFlow or Keras layer takes "
            "both); fold the weights into the mask: mask * batch_weights[:, None, ...]"
        )
    if options.zero_debias_moving_mean:
        raise ValueError(
            "mask cannot be combined with zero_debias_moving_mean=True: zero-debiasing is "
            "tf-slim's, whose layer has no mask, so there is nothing to reproduce"
        )
    if plan.fused_kernel:
        raise ValueError(
            "mask cannot be used where TensorFlow's fused kernel runs (fused=True with this "
            "input): the kernel has no mask (tf-keras ignores it there, with a warning; Keras 3 "
            "has no fused kernel); pass fused=False for the Keras layer's masked statistics"
        )


def plan_layer(options: LayerOptions, rank: int, x: Any, weighted: bool, xp: Namespace) -> LayerPlan:
    """Pick the implementation TensorFlow runs for this call (see the module doc)."""
    dtype_is_fusable = dtype_name(x.dtype) in FUSED_INPUT_DTYPES
    possible_to_fuse = not weighted and not options.renorm and rank in (2, 4)
    path: Path
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
        path = "keras_fused" if fused_kernel else "keras_layer"
        state_dtype = compute_dtype(xp, x.dtype, ComputeRule.HALF_IN_FLOAT32)
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
        decay_weight=number_weight(options.decay, weight_rounding(path), state_dtype, xp),
    )

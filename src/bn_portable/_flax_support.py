"""``bn_portable.flax``'s argument checks, its static options, and the conversions
between its ``BatchNorm`` and ``flax.nnx.BatchNorm``.

What maps to what, and what is refused, is stated in ``BatchNorm.from_flax`` and
``BatchNorm.to_flax``; this module reads and builds the Flax side. Importing it
imports JAX and Flax (``bn_portable.flax`` is its only importer).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as flax_dtypes

from ._tf._options import DEFAULTS, LayerOptions
from ._tf._state import BatchNormState

#: The options a module takes: batch_norm's, less those the module decides.
OPTION_NAMES = tuple(
    name for name in DEFAULTS if name not in ("is_training", "data_format", "cross_replica_sum")
)

#: Why some of batch_norm's arguments are not module options.
NOT_OPTIONS = {
    "is_training": "it follows the module's mode: call .train() or .eval(), or pass "
    "use_running_average",
    "cross_replica_sum": "pass axis_name, the mapped axis to synchronize the statistics over",
    "batch_weights": "it is data: pass it to __call__(x, batch_weights=...)",
    "state": "the module holds the state: use load_state() or BatchNorm.from_state()",
}

#: ``flax.nnx.BatchNorm``'s ``axis`` for each data format: channels last, or on axis 1.
_AXES = {"NHWC": -1, "NCHW": 1}


def flax_arguments(module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(BatchNorm's constructor arguments, its variables' values)`` for a ``flax.nnx.BatchNorm``.

    Raises ``TypeError`` for another module and ``ValueError`` for what has no
    TensorFlow counterpart (every reason at once).
    """
    if not isinstance(module, nnx.BatchNorm):
        raise TypeError(
            f"module must be a flax.nnx.BatchNorm, got {type(module).__name__} (for a "
            "flax.linen.BatchNorm, build the BatchNormState from its variables and use "
            "BatchNorm.from_state)"
        )
    mean = module.mean[...]
    variables = {"moving_mean": mean, "moving_variance": module.var[...]}
    if module.scale is not None:
        variables["gamma"] = module.scale[...]
    if module.bias is not None:
        variables["beta"] = module.bias[...]
    axis = module.axis
    data_format = next((name for name, value in _AXES.items() if value == axis), None)
    momentum = module.momentum
    dtype = None if module.dtype is None else jnp.dtype(module.dtype)
    refusals = [
        (data_format is None, f"axis={axis!r}: only the last axis (-1, data_format='NHWC') "
         "or axis 1 (data_format='NCHW') holds TensorFlow's channels"),
        (module.axis_index_groups is not None, "axis_index_groups is set: TensorFlow's "
         "synchronized statistics sum over the whole axis"),
        (dtype not in (None, jnp.dtype(jnp.float32)), f"dtype={dtype}: TensorFlow computes "
         "in the input's dtype (float32 for half-precision statistics), not a chosen one"),
        (module.promote_dtype is not flax_dtypes.promote_dtype,
         "promote_dtype is not Flax's default: TensorFlow's dtype rules replace it"),
        (not _is_fraction(momentum), f"momentum={momentum!r} must be a number in [0, 1]"),
        (any(value.dtype != mean.dtype for value in variables.values()),
         "the parameters' dtype (param_dtype) is not the statistics' "
         f"({mean.dtype}): TensorFlow's variables share one dtype"),
    ]
    reasons = [reason for refused, reason in refusals if refused]
    if reasons:
        raise ValueError("module cannot be converted: " + "; ".join(reasons))
    arguments = {
        "num_features": module.num_features,
        "data_format": data_format,
        "dtype": mean.dtype,
        "use_running_average": module.use_running_average,
        "axis_name": module.axis_name,
        "decay": float(momentum),
        "epsilon": float(module.epsilon),
        "center": module.use_bias,
        "scale": module.use_scale,
        # Flax moves the running variance toward the biased batch variance:
        # TensorFlow's non-fused path (its fused kernel Bessel-corrects it).
        "fused": False,
    }
    return arguments, variables


def flax_module(
    state: BatchNormState,
    options: LayerOptions,
    *,
    data_format: str,
    use_running_average: bool | None,
    axis_name: Any,
) -> nnx.BatchNorm:
    """The ``flax.nnx.BatchNorm`` of a module's state and options, or a ``ValueError``."""
    dtype = state.moving_mean.dtype
    refusals = [
        (options.fused, "fused=True moves the moving variance toward the Bessel-corrected "
         "batch variance, Flax toward the biased one"),
        (options.zero_debias_moving_mean, "zero_debias_moving_mean=True has no Flax counterpart"),
        (options.renorm, "renorm=True has no Flax counterpart"),
        (options.activation_fn is not None, "activation_fn is set, Flax's BatchNorm has none"),
        (options.skip_nonfinite, "skip_nonfinite=True has no Flax counterpart"),
        (dtype != jnp.float32, f"the variables are {dtype}, Flax's BatchNorm keeps float32 "
         "statistics"),
    ]
    reasons = [reason for refused, reason in refusals if refused]
    if reasons:
        raise ValueError("module cannot be converted: " + "; ".join(reasons))
    converted = nnx.BatchNorm(
        state.moving_mean.shape[0],
        use_running_average=use_running_average,
        axis=_AXES[data_format],
        momentum=options.decay,
        epsilon=options.epsilon,
        use_bias=options.center,
        use_scale=options.scale,
        axis_name=axis_name,
        use_fast_variance=False,  # the two-pass variance, as TensorFlow's layer computes it
        rngs=nnx.Rngs(0),  # unused: the initializers are constants, and replaced below
    )
    converted.mean[...] = state.moving_mean
    converted.var[...] = state.moving_variance
    if converted.scale is not None:
        converted.scale[...] = state.gamma
    if converted.bias is not None:
        converted.bias[...] = state.beta
    return converted


def _is_fraction(value: Any) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    number = float(value)
    return math.isfinite(number) and 0.0 <= number <= 1.0


@dataclasses.dataclass(frozen=True, eq=False)
class ModuleOptions:
    """The validated options of a training and of an inference step, as one static attribute.

    nnx keeps non-array attributes in the graph definition, which ``jax.jit``
    and ``nnx.jit`` hash: ``LayerOptions`` holds dictionaries, so this holder
    compares by a hashable key (the options, with ``axis_name`` standing for
    the reducer made from it) instead.
    """

    training: LayerOptions
    inference: LayerOptions
    key: Hashable

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModuleOptions) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return "<validated batch_norm options>"


def module_options(validated: LayerOptions, axis_name: Any) -> ModuleOptions:
    """The options of a module's calls, its initializers dropped (used once, to create it)."""
    # prepare refuses initializers given together with a state, as TensorFlow
    # uses them only to create the variables.
    training = dataclasses.replace(validated, param_initializers={})
    signature = dataclasses.replace(training, cross_replica_sum=None).signature
    # The reducer is a closure per module: axis_name identifies it. Without a
    # signature (an unhashable activation_fn) the holder equals itself only.
    key = (signature, axis_name) if signature is not None else object()
    return ModuleOptions(training, dataclasses.replace(training, is_training=False), key)


def check_mode(value: Any, name: str, *, none: bool) -> None:
    """``value`` is a Python bool (or None where ``none``)."""
    # A traced or array flag would need a host read to pick the path.
    if not (isinstance(value, bool) or (none and value is None)):
        allowed = "True, False or None" if none else "True or False"
        raise TypeError(f"{name} must be {allowed}, got {value!r}")


def check_axis_name(axis_name: Any) -> None:
    """None, a mapped axis' name or a tuple of names (what ``lax.psum`` takes)."""
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    if axis_name is not None and not (names and all(isinstance(n, str) for n in names)):
        raise TypeError(f"axis_name must be a str, a tuple of str or None, got {axis_name!r}")


def variable_dtype(dtype: Any) -> Any:
    """``dtype`` as a floating NumPy dtype that JAX creates as it is."""
    try:
        chosen = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}") from None
    if not jnp.issubdtype(chosen, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {chosen}")
    if jax.dtypes.canonicalize_dtype(chosen) != chosen:
        # JAX would silently create float32 variables instead.
        raise ValueError(
            f"dtype is {chosen}, which JAX does not create unless jax_enable_x64 is set"
        )
    return chosen

"""``BatchNormState``: the layer's variables, named as TensorFlow names them."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

from .._lib import _checks
from .._lib._compat import is_array_api_obj
from .._lib._dtypes import dtype_name
from .._lib._typing import Device, Namespace
from ._fields import COUNTER, COUNTER_DTYPE, FIELDS, INITIALIZED_FIELDS, SCALAR_FIELDS
from ._variables import read_tf_variables


class BatchNormState(NamedTuple):
    """The variables of one ``batch_norm`` layer; ``None`` where unused.

    Field names are TensorFlow's variable names (``moving_mean/biased`` and
    ``moving_mean/local_step`` become ``moving_mean_biased`` and ``local_step``),
    so a checkpoint's values drop straight in. A ``NamedTuple`` is immutable and
    is a pytree for JAX (``jit``, ``grad``) and PyTorch without registration.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> state = bn.BatchNormState(moving_mean=np.zeros(3), moving_variance=np.ones(3))
    >>> print(state.beta, state.moving_variance)
    None [1. 1. 1.]
    >>> state._fields[:4]
    ('beta', 'gamma', 'moving_mean', 'moving_variance')
    """

    beta: Any = None
    gamma: Any = None
    moving_mean: Any = None
    moving_variance: Any = None
    moving_mean_biased: Any = None
    local_step: Any = None
    moving_stddev: Any = None
    renorm_mean: Any = None
    renorm_stddev: Any = None
    #: Training steps skipped for non-finite batch statistics (``skip_nonfinite=True``).
    skipped_steps: Any = None

    @classmethod
    def from_tf_variables(
        cls, mapping: Mapping[str, Any], scope: str, **options: Any
    ) -> tuple[BatchNormState, dict[str, Any]]:
        """``(state, options)`` of the layer under ``scope`` in a TF checkpoint's dict.

        ``mapping`` is ``{name: value}`` as a checkpoint reader returns it
        (tf-slim or Keras names, with or without ``:0``); see
        ``bn_portable.porting.state_from_tf_variables``.
        """
        fields, merged = read_tf_variables(mapping, scope, **options)
        return cls(**fields), merged


assert BatchNormState._fields == FIELDS, "FIELDS lists BatchNormState's fields in order"

_MOVING_MEAN, _MOVING_VARIANCE = FIELDS.index("moving_mean"), FIELDS.index("moving_variance")


def with_moving_statistics(state: BatchNormState, moving_mean: Any, moving_variance: Any) -> BatchNormState:
    """``state._replace(moving_mean=…, moving_variance=…)`` in half its time: every plain
    training step makes one, and ``_replace``'s keyword mapping cost a small call 0.6 µs
    (2 CPU cores)."""
    values = list(state)
    values[_MOVING_MEAN], values[_MOVING_VARIANCE] = moving_mean, moving_variance
    return BatchNormState._make(values)


#: Default initial value of each field (TensorFlow's zeros / ones initializers).
_DEFAULTS = {"beta": 0.0, "gamma": 1.0, "moving_mean": 0.0, "moving_variance": 1.0}


def initial_state(
    fields: tuple[str, ...],
    channels: int,
    dtype: Any,
    param_initializers: Mapping[str, Any],
    xp: Namespace,
    device: Device,
) -> BatchNormState:
    """The variables as TensorFlow creates them on the layer's first call.

    ``moving_mean_biased`` and ``local_step`` start at zero whatever the
    initializers say; ``moving_stddev`` and ``renorm_stddev`` start at the square
    root of the moving variance's initial value and ``renorm_mean`` at the moving
    mean's (tf-keras' renorm initializers).
    """
    shape = (channels,)
    initial = {
        name: _initial_value(name, param_initializers.get(name), shape, dtype, xp, device)
        for name in INITIALIZED_FIELDS
    }
    values = {
        "moving_mean_biased": xp.zeros(shape, dtype=dtype, device=device),
        "local_step": xp.zeros((), dtype=dtype, device=device),
        "moving_stddev": xp.sqrt(initial["moving_variance"]),
        "renorm_mean": xp.asarray(initial["moving_mean"], copy=True),
        "renorm_stddev": xp.sqrt(initial["moving_variance"]),
        COUNTER: xp.zeros((), dtype=getattr(xp, COUNTER_DTYPE), device=device),
        **initial,
    }
    return BatchNormState(**{field: values[field] for field in fields})


def check_state(
    state: Any,
    fields: tuple[str, ...],
    channels: int,
    dtype: Any,
    xp: Namespace,
    device: Device,
    configuration: str,
) -> None:
    """``state`` has exactly ``fields``, each of this namespace, device, dtype and shape."""
    if not isinstance(state, BatchNormState):
        raise TypeError(f"state must be a BatchNormState or None, got {type(state).__name__}")
    present = tuple(field for field in BatchNormState._fields if getattr(state, field) is not None)
    if present != fields:
        raise ValueError(
            f"state was built for another configuration: {configuration} needs the "
            f"fields {', '.join(fields)}, but state has {', '.join(present) or 'none'}"
        )
    for field in fields:
        value = getattr(state, field)
        _checks.check_namespace(f"state.{field}", value, xp)
        _checks.check_device(f"state.{field}", value, device)
        counter = field == COUNTER  # an int32 count, whatever x's dtype
        expected = getattr(xp, COUNTER_DTYPE) if counter else dtype
        if value.dtype != expected:
            raise TypeError(
                f"state.{field} must have dtype {dtype_name(expected)} for this input "
                f"and configuration, got {dtype_name(value.dtype)}"
            )
        if field in SCALAR_FIELDS:
            _checks.check_shape(f"state.{field}", value, (), "one value for the layer")
        else:
            _checks.check_shape(f"state.{field}", value, (channels,), "one value per channel")


def _initial_value(
    name: str, initializer: Any, shape: tuple[int, ...], dtype: Any, xp: Namespace, device: Device
) -> Any:
    """One variable's initial value: a fresh array of ``shape`` and ``dtype``.

    Numbers and lists are converted straight to ``dtype`` (TensorFlow's constant
    initializer does not round through float32); arrays must be of x's library
    and are copied, so the state never aliases the caller's arrays.
    """
    label = f"param_initializers[{name!r}]"
    if initializer is None:
        return xp.full(shape, _DEFAULTS[name], dtype=dtype, device=device)
    value = initializer(shape, dtype) if callable(initializer) else initializer
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return xp.full(shape, float(value), dtype=dtype, device=device)
    if isinstance(value, (list, tuple)):
        try:
            value = xp.asarray(value, dtype=dtype, device=device)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{label} must hold numbers: {error}") from None
    if not is_array_api_obj(value):
        raise TypeError(
            f"{label} must be an array of x's library, a number, or a callable "
            f"(shape, dtype) returning one; got {type(value).__name__}"
        )
    _checks.check_namespace(label, value, xp)
    # TensorFlow cannot initialise a float variable from a complex value.
    _checks.check_real_dtype(label, value, xp)
    if tuple(value.shape) not in ((), shape):
        raise ValueError(
            f"{label} must be a scalar or have shape {shape} (one value per channel); "
            f"got shape {tuple(value.shape)}"
        )
    array = xp.astype(xp.asarray(value, device=device, copy=True), dtype)
    return xp.asarray(xp.broadcast_to(array, shape), copy=True) if array.ndim == 0 else array


def check_module_state(state: Any, fields: tuple[str, ...], module: str) -> None:
    """A state a layer module loads (PyTorch's, Flax's): a ``BatchNormState`` with exactly the
    module's ``fields``; ``module`` describes the module in the message."""
    if not isinstance(state, BatchNormState):
        raise TypeError(f"state must be a BatchNormState, got {type(state).__name__}")
    present = tuple(field for field in FIELDS if getattr(state, field) is not None)
    if present != fields:
        raise ValueError(
            f"state has the fields {', '.join(present) or 'none'}, but {module} "
            f"has {', '.join(fields)}"
        )

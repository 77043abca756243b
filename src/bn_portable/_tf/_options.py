"""The layer's options: the one list of names, defaults and validation.

``batch_norm`` and ``batch_norm_vjp`` spell these out in their signatures (a
test checks that the signatures match ``DEFAULTS``); every other caller
(``recalibrate``, the porting helpers, ``bn_portable.torch``) takes the names
and defaults from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .._lib import _call_cache, _checks
from .._lib._backends import torch_compiling
from .._lib._layout import LAYER_DATA_FORMATS
from .._lib._typing import CrossReplicaSum
from ._fields import INITIALIZED_FIELDS

#: Every option of ``batch_norm`` (``x``, ``state`` and ``batch_weights`` are data)
#: with its default: TensorFlow's, and off for the two TensorFlow does not have.
DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "decay": 0.999,
        "center": True,
        "scale": False,
        "epsilon": 0.001,
        "activation_fn": None,
        "param_initializers": None,
        "is_training": True,
        "fused": False,
        "data_format": "NHWC",
        "zero_debias_moving_mean": False,
        "renorm": False,
        "renorm_clipping": None,
        "renorm_decay": 0.99,
        "cross_replica_sum": None,
        "skip_nonfinite": False,
        "execution": "graph",
    }
)

#: How the TensorFlow program that trained a model ran (``execution``): only the
#: Keras layer's fused path differs. "graph" (TF1 graph mode, tf-slim) and "xla"
#: (Keras with ``jit_compile=True``) move the averages in graph ops; "eager"
#: (Keras 2 in eager calls, ``tf.function`` and ``fit``) lets the fused kernel
#: move them (``_kernels._moving_averages.kernel_average``).
EXECUTIONS = ("graph", "xla", "eager")

#: The keys of ``renorm_clipping``.
RENORM_CLIPPING_KEYS = ("rmin", "rmax", "dmax")

_BOOLEANS = ("center", "scale", "is_training", "fused", "zero_debias_moving_mean", "renorm", "skip_nonfinite")
_NAMES = tuple(DEFAULTS)
#: Where the two mapping options sit in ``DEFAULTS``' order.
_PARAM_INITIALIZERS, _RENORM_CLIPPING = _NAMES.index("param_initializers"), _NAMES.index("renorm_clipping")


@dataclass(frozen=True)
class LayerOptions:
    """The options of one call, validated (field order: ``DEFAULTS``'s)."""

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
    cross_replica_sum: CrossReplicaSum | None
    skip_nonfinite: bool
    #: One of ``EXECUTIONS``.
    execution: str

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

    def describe(self) -> str:
        """The options that decide the state's fields, for messages."""
        flags = ("center", "scale", "zero_debias_moving_mean", "renorm", "skip_nonfinite")
        return "batch_norm(" + ", ".join(f"{name}={getattr(self, name)}" for name in flags) + ")"


def layer_options(*, weighted: bool, **arguments: Any) -> LayerOptions:
    """Validate ``batch_norm``'s options; omitted ones take their ``DEFAULTS``.

    ``weighted`` says whether the call has ``batch_weights`` (renorm refuses them).
    The validated options are remembered per exact argument values (types
    included, so ``1`` and ``True`` stay apart): a training loop passes the
    same options on every call, and checking them again is most of the cost of
    a small call. Arguments that are not hashable plain values (initializer
    mappings, a clipping dictionary of arrays) are checked every time.
    """
    if len(arguments) != len(DEFAULTS) or tuple(arguments) != _NAMES:
        arguments = _complete(arguments)
    return _call_cache.remember(  # type: ignore[no-any-return]
        options_key(weighted, tuple(arguments.values())), lambda: _validate(weighted, arguments)
    )


def check_module_options(
    options: Mapping[str, Any], allowed: tuple[str, ...], not_options: Mapping[str, str]
) -> None:
    """A layer module's options (PyTorch's, Flax's): ``allowed`` names only; each name in
    ``not_options`` refused with the reason it maps to."""
    for name in options:
        if name in not_options:
            raise TypeError(f"{name} is not a BatchNorm option: {not_options[name]}")
        if name not in allowed:
            raise TypeError(
                f"BatchNorm got an unknown option {name!r}; expected some of {', '.join(sorted(allowed))}"
            )


def _complete(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Every option, in ``DEFAULTS``' order; an unknown name is a ``TypeError``."""
    unknown = sorted(set(arguments) - set(DEFAULTS))
    if unknown:
        raise TypeError(
            f"unknown batch_norm option {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(DEFAULTS)}"
        )
    return {name: arguments.get(name, default) for name, default in DEFAULTS.items()}


def options_key(weighted: bool, values: tuple[Any, ...], *, eager: bool = False) -> Hashable | None:
    """Every option's raw value (``DEFAULTS``' order) with its type, as a key; None if one
    is not plain (or while the compiler traces: checked once per compiled graph instead;
    ``eager=True`` where the caller has asked already)."""
    if not eager and torch_compiling():
        return None
    if values[_PARAM_INITIALIZERS] is not None or values[_RENORM_CLIPPING] is not None:
        converted = list(values)  # mappings: their items
        for index in (_PARAM_INITIALIZERS, _RENORM_CLIPPING):
            if values[index] is not None:
                items = _plain_items(_NAMES[index], values[index])
                if items is None:
                    return None
                converted[index] = items
        values = tuple(converted)
    return ("layer_options", weighted, values, tuple(map(type, values)))


def _plain_items(name: str, mapping: Any) -> tuple[Any, ...] | None:
    """A mapping option's items as a key, or None where they are not plain numbers."""
    if name == "param_initializers" and mapping:
        return None  # arrays or callables: validated (and copied) every call
    if not isinstance(mapping, Mapping):
        return None  # let validation say what is wrong
    items = tuple(mapping.items())
    if not all(type(v) in (int, float, bool) or v is None for _, v in items):
        return None
    return items


def _validate(weighted: bool, arguments: Mapping[str, Any]) -> LayerOptions:
    valid = _complete(arguments)
    for name in _BOOLEANS:
        _checks.check_bool(name, valid[name])
    valid["decay"] = _checks.check_real("decay", valid["decay"], low=0.0, high=1.0)
    valid["renorm_decay"] = _checks.check_real("renorm_decay", valid["renorm_decay"], low=0.0, high=1.0)
    # epsilon = 0 as in TensorFlow: a channel of zero variance then normalizes to NaN.
    valid["epsilon"] = _checks.check_real("epsilon", valid["epsilon"], low=0.0)
    _checks.check_callable("activation_fn", valid["activation_fn"])
    _checks.check_callable("cross_replica_sum", valid["cross_replica_sum"])
    _checks.check_choice("data_format", valid["data_format"], LAYER_DATA_FORMATS)
    _checks.check_choice("execution", valid["execution"], EXECUTIONS)
    valid["param_initializers"] = _checks.check_options_dict(
        "param_initializers", valid["param_initializers"], INITIALIZED_FIELDS
    )
    valid["renorm_clipping"] = _renorm_clipping(valid["renorm_clipping"], valid["renorm"])
    if valid["renorm"] and (weighted or valid["zero_debias_moving_mean"]):
        raise ValueError(
            "renorm=True cannot be combined with batch_weights or "
            "zero_debias_moving_mean=True (TensorFlow rejects the combination too)"
        )
    return LayerOptions(**valid)


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

"""A batch norm's state moved between frameworks' conventions: the values exactly, the
settings renamed and converted, and every rule that differs said.

Every framework normalizes at inference with ``(x − mean)/sqrt(variance + eps)``
and its stored statistics, so copying the arrays unchanged keeps inference
identical (given the same epsilon, which travels as a setting). What differs is
how training moves the statistics afterwards; those differences are returned as
notes, and what has no counterpart is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._lib._compat import array_namespace
from .._tf._state import BatchNormState

#: Each convention's names for (scale, offset, mean, variance), and its decay setting.
NAMES: Mapping[str, tuple[str, str, str, str]] = {
    "tensorflow": ("gamma", "beta", "moving_mean", "moving_variance"),
    "pytorch": ("weight", "bias", "running_mean", "running_var"),
    "keras": ("gamma", "beta", "moving_mean", "moving_variance"),
    "flax": ("scale", "bias", "mean", "var"),
    "onnx": ("scale", "B", "input_mean", "input_var"),
}
#: The name of each convention's epsilon setting.
EPSILON = {"tensorflow": "epsilon", "pytorch": "eps", "keras": "epsilon", "flax": "epsilon", "onnx": "epsilon"}
#: Which batch variance each convention's training moves its running variance toward.
VARIANCE_TARGET = {
    "tensorflow": "the unbiased batch variance on the fused path, the biased one otherwise",
    "pytorch": "the unbiased batch variance",
    "keras": "the biased batch variance",
    "flax": "the biased batch variance",
    "onnx": "the biased (population) batch variance",
}
#: TensorFlow state fields that only TensorFlow has.
_TF_ONLY = ("moving_mean_biased", "local_step", "moving_stddev", "renorm_mean", "renorm_stddev", "skipped_steps")


@dataclass(frozen=True)
class ConvertedState:
    """``convert_state``'s result: the target's state and settings, and what differs."""

    #: A ``BatchNormState`` for ``"tensorflow"``, else ``{name: array or None}``.
    state: Any
    #: The target's settings by its own names (``decay``/``momentum``, ``epsilon``/``eps``...).
    settings: dict[str, Any]
    #: Rules that differ between the two conventions, one sentence each.
    notes: tuple[str, ...]


def convert_state(state: Any, *, source: str, target: str, **settings: Any) -> ConvertedState:
    """A batch norm's state and settings in another framework's convention.

    ``source`` and ``target`` are ``"tensorflow"`` (a ``BatchNormState``;
    settings ``decay``, ``epsilon``), ``"pytorch"`` (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``; ``momentum``,
    ``eps``), ``"keras"`` (``gamma``, ``beta``, ``moving_mean``,
    ``moving_variance``; ``momentum``, ``epsilon``), ``"flax"`` (``scale``,
    ``bias``, ``mean``, ``var``; ``momentum``, ``epsilon``) or ``"onnx"``
    (``scale``, ``B``, ``input_mean``, ``input_var``; ``momentum``,
    ``epsilon``); ``settings`` are the source's, by its names. The arrays are
    the same objects (inference gives the same numbers), the settings are
    converted (TensorFlow's decay is Keras 3's, Flax's and ONNX's momentum and
    ``1 − momentum`` in PyTorch), and ``notes`` says every rule that differs
    from then on (toward which batch variance each moves its running variance;
    dropped counters). Refused, with the reason: PyTorch's ``momentum=None``
    (a cumulative average) and TensorFlow's renorm statistics, which have no
    counterpart.

    Examples
    --------
    >>> import numpy as np
    >>> from bn_portable.conventions import convert_state
    >>> torch_state = {"weight": np.ones(2), "bias": np.zeros(2), "running_mean": np.zeros(2),
    ...                "running_var": np.ones(2), "num_batches_tracked": np.array(7)}
    >>> converted = convert_state(torch_state, source="pytorch", target="keras", momentum=0.1, eps=1e-5)
    >>> converted.settings
    {'epsilon': 1e-05, 'momentum': 0.9, 'scale': True, 'center': True}
    >>> sorted(converted.state)
    ['beta', 'gamma', 'moving_mean', 'moving_variance']
    >>> for note in converted.notes:
    ...     print(note)
    num_batches_tracked is dropped (only PyTorch counts batches)
    the variance is copied unchanged (inference is identical); from now on it moves toward the biased batch variance, where pytorch moved it toward the unbiased batch variance
    """
    for name, value in (("source", source), ("target", target)):
        if value not in NAMES:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, NAMES))}; got {value!r}")
    known = {"decay" if source == "tensorflow" else "momentum", EPSILON[source]}
    if target == "pytorch":
        known.add("num_batches_tracked")
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(
            f"unknown setting {', '.join(map(repr, unknown))} for {source} -> {target}; "
            f"expected {', '.join(sorted(known))}"
        )
    values, decay, epsilon, extra = _read(state, source, settings)
    notes: list[str] = list(extra)
    if VARIANCE_TARGET[source] != VARIANCE_TARGET[target]:
        notes.append(
            f"the variance is copied unchanged (inference is identical); from now on it moves "
            f"toward {VARIANCE_TARGET[target]}, where {source} moved it toward {VARIANCE_TARGET[source]}"
        )
    return ConvertedState(*_write(values, decay, epsilon, target, settings, notes), tuple(notes))


def _read(
    state: Any, source: str, settings: Mapping[str, Any]
) -> tuple[tuple[Any, Any, Any, Any], float, float, list[str]]:
    """The four arrays, the decay (weight of the old value) and epsilon, and notes."""
    notes: list[str] = []
    names = NAMES[source]
    if source == "tensorflow":
        if not isinstance(state, BatchNormState):
            raise TypeError(f"a tensorflow state must be a BatchNormState, got {type(state).__name__}")
        renorm = [f for f in ("moving_stddev", "renorm_mean", "renorm_stddev") if getattr(state, f) is not None]
        if renorm:
            raise ValueError(
                f"the state holds batch renormalization's {', '.join(renorm)}, which no other "
                "convention has: convert a state trained without renorm"
            )
        if state.moving_mean_biased is not None:
            notes.append("the zero-debiased moving mean is copied; its biased average and step count are dropped")
        if state.skipped_steps is not None:
            notes.append("skipped_steps (skip_nonfinite) is dropped")
        values = tuple(getattr(state, n) for n in names)
    else:
        if not isinstance(state, Mapping):
            raise TypeError(f"a {source} state must be a dict of its arrays, got {type(state).__name__}")
        allowed = {*names, "num_batches_tracked"} if source == "pytorch" else set(names)
        unknown = sorted(set(state) - allowed)
        if unknown:
            raise ValueError(f"a {source} state has no {', '.join(map(repr, unknown))}; expected {sorted(allowed)}")
        for required in names[2:]:
            if state.get(required) is None:
                raise ValueError(f"a {source} state needs {required!r}")
        values = tuple(state.get(n) for n in names)
        if source == "pytorch" and state.get("num_batches_tracked") is not None:
            notes.append("num_batches_tracked is dropped (only PyTorch counts batches)")
    decay = _decay(source, settings)
    epsilon = _setting(settings, EPSILON[source], source)
    return values, decay, float(epsilon), notes


def _decay(source: str, settings: Mapping[str, Any]) -> float:
    if source == "tensorflow":
        return float(_setting(settings, "decay", source))
    momentum = _setting(settings, "momentum", source)
    if source != "pytorch":
        return float(momentum)  # Keras 3, Flax and ONNX weigh the old value, as TF's decay
    if momentum is None:
        raise ValueError(
            "PyTorch's momentum=None (a cumulative average over num_batches_tracked) has no "
            "counterpart: the other conventions move the statistics by a fixed weight"
        )
    return 1.0 - float(momentum)


def _write(
    values: tuple[Any, Any, Any, Any], decay: float, epsilon: float, target: str,
    settings: Mapping[str, Any], notes: list[str],
) -> tuple[Any, dict[str, Any]]:
    names = NAMES[target]
    out: dict[str, Any] = {EPSILON[target]: epsilon}
    if target == "tensorflow":
        out["decay"] = decay
        out["scale"], out["center"] = values[0] is not None, values[1] is not None
        return BatchNormState(**dict(zip(names, values))), out
    if target == "pytorch":
        # PyTorch's update old·(1 − m) + new·m rounds differently from old − (old − new)·(1 − decay).
        out["momentum"] = 1.0 - decay
        if (values[0] is None) != (values[1] is None):  # affine is both or neither
            values = _filled(values, notes, "PyTorch's affine has both weight and bias")
        out["affine"] = values[0] is not None
        state = dict(zip(names, values))
        state["num_batches_tracked"] = settings.get("num_batches_tracked")
        if state["num_batches_tracked"] is None:
            notes.append("num_batches_tracked is not known here: set it (PyTorch uses it only with momentum=None)")
        return state, out
    out["momentum"] = decay
    if target == "onnx" and (values[0] is None or values[1] is None):
        values = _filled(values, notes, "ONNX's BatchNormalization requires scale and B")
    if target == "keras":
        out["scale"], out["center"] = values[0] is not None, values[1] is not None
    elif target == "flax":
        out["use_scale"], out["use_bias"] = values[0] is not None, values[1] is not None
    return dict(zip(names, values)), out


def _filled(values: tuple[Any, Any, Any, Any], notes: list[str], why: str) -> tuple[Any, Any, Any, Any]:
    """A missing scale as ones and a missing offset as zeros (the same numbers), said in a note."""
    mean = values[2]
    xp = array_namespace(mean)
    scale = xp.ones_like(mean) if values[0] is None else values[0]
    offset = xp.zeros_like(mean) if values[1] is None else values[1]
    notes.append(f"{why}: the missing ones are ones (scale) and zeros (offset), which change no number")
    return scale, offset, values[2], values[3]


def _setting(settings: Mapping[str, Any], name: str, source: str) -> Any:
    if name not in settings:
        raise TypeError(f"converting from {source} needs the setting {name!r} (the {source} layer's own)")
    return settings[name]

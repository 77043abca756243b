"""A TensorFlow layer's variables, found by name, and the options they imply.

A checkpoint holds values, not the layer's configuration: ``center``,
``scale``, ``zero_debias_moving_mean`` and ``renorm`` follow from which
variables exist; ``decay``, ``epsilon``, ``data_format``, ``fused``... are the
model code's and come as options (checked here). The results are plain field
dicts, which ``BatchNormState`` and the porting helpers turn into states.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._lib._compat import is_array_api_obj
from ._fields import TF_NAMES, required_fields
from ._options import DEFAULTS, layer_options

#: Suffixes a variable name may carry: a tensor name's ``:0``, and the object-based
#: (TF2 ``tf.train.Checkpoint``) checkpoint's attribute path.
SUFFIXES = ("", ":0", "/.ATTRIBUTES/VARIABLE_VALUE")

#: Options a checkpoint's variables decide.
STRUCTURAL = ("center", "scale", "zero_debias_moving_mean", "renorm")

#: Options a porting helper accepts: every layer option but the per-call mode.
PORTABLE_OPTIONS = tuple(name for name in DEFAULTS if name != "is_training")


def read_tf_variables(
    mapping: Mapping[str, Any], scope: str, **options: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields, options)`` of the layer under ``scope`` in a checkpoint's ``{name: value}``.

    See ``bn_portable.porting.state_from_tf_variables`` for the names looked up.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a dict of variable names to arrays, got {type(mapping).__name__}")
    if not isinstance(scope, str):
        raise TypeError(f"scope must be a str, got {type(scope).__name__}")
    scope = scope.rstrip("/")
    found: dict[str, Any] = {}
    for field, name in TF_NAMES.items():
        candidates = [f"{scope}/{name}"]
        if field in ("moving_mean_biased", "local_step"):
            candidates.insert(0, f"{scope}/{scope}/{name}")
        for candidate in candidates:
            matches = [candidate + s for s in SUFFIXES if candidate + s in mapping]
            if len(matches) > 1:
                raise ValueError(f"mapping has the variable {candidate!r} twice: {matches}")
            if matches:
                found[field] = mapping[matches[0]]
                break
    if "moving_mean" not in found or "moving_variance" not in found:
        under = sorted(k for k in mapping if isinstance(k, str) and k.startswith(scope + "/"))
        raise ValueError(
            f"mapping has no batch-norm layer under scope {scope!r}: expected "
            f"{scope}/moving_mean and {scope}/moving_variance; names under that scope: "
            f"{under[:12] or 'none'}"
        )
    return fields_and_options(found, options, f"the variables under {scope!r}")


def fields_and_options(
    found: Mapping[str, Any], options: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the values' shapes, merge the structural options, validate all.

    ``found`` maps field names to values; ``where`` names their source in messages.
    """
    for name in options:
        if name not in PORTABLE_OPTIONS:
            raise TypeError(
                f"unknown batch_norm option {name!r}; expected some of {', '.join(PORTABLE_OPTIONS)}"
            )
    structural = {
        "center": "beta" in found,
        "scale": "gamma" in found,
        "zero_debias_moving_mean": "moving_mean_biased" in found or "local_step" in found,
        "renorm": any(f in found for f in ("moving_stddev", "renorm_mean", "renorm_stddev")),
    }
    for name in STRUCTURAL:
        if name in options and options[name] != structural[name]:
            raise ValueError(
                f"{name}={options[name]!r} was given, but {where} say {name}={structural[name]!r}"
            )
    merged = {**options, **structural}
    wanted = required_fields(
        center=merged["center"], scale=merged["scale"],
        zero_debias=merged["zero_debias_moving_mean"], renorm=merged["renorm"],
    )
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"{where} are incomplete: {', '.join(missing)} missing")
    for field in wanted:
        if not is_array_api_obj(found[field]):
            raise TypeError(f"{field} of {where} must be an array, got {type(found[field]).__name__}")
    mean_shape = tuple(found["moving_mean"].shape)
    if len(mean_shape) != 1:
        raise ValueError(f"moving_mean of {where} must have shape (C,), got {mean_shape}")
    for field in wanted:
        expected = () if field == "local_step" else mean_shape
        if tuple(found[field].shape) != expected:
            raise ValueError(
                f"{field} of {where} must have shape {expected} (as moving_mean), "
                f"got {tuple(found[field].shape)}"
            )
    layer_options(weighted=False, **merged)
    return {field: found[field] for field in wanted}, merged

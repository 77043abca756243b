"""Every batch-norm layer of a checkpoint's ``{name: value}`` mapping, found by its variables.

A layer is a scope holding a ``moving_variance`` (tf-slim, Keras and TF2 object
checkpoints all name it so; renorm and zero-debias add variables beside it).
With ``ema=True`` each variable's ``ExponentialMovingAverage`` shadow, where
the checkpoint has one, stands in for it: the values a model trained with
``tf.train.ExponentialMovingAverage`` is evaluated with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._fields import TF_NAMES
from ._variables import SUFFIXES, read_tf_variables

#: The shadow variable ``tf.train.ExponentialMovingAverage`` keeps beside each variable.
EMA_SUFFIX = "/ExponentialMovingAverage"


def batch_norm_scopes(mapping: Mapping[str, Any]) -> list[str]:
    """The scopes of every batch-norm layer in the mapping, in name order."""
    scopes = set()
    for key in mapping:
        if not isinstance(key, str):
            raise TypeError(f"mapping's keys must be variable names (str), got {type(key).__name__}")
        name = _bare(key)
        if name.endswith("/moving_variance"):
            scopes.add(name.removesuffix("/moving_variance"))
    return sorted(scopes)


def with_shadows(mapping: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The mapping with each shadowed variable's value replaced by its EMA shadow, and the
    names (without suffixes) that had a shadow."""
    shadows = {}
    for key, value in mapping.items():
        name = _bare(key)
        if name.endswith(EMA_SUFFIX):
            shadows[name.removesuffix(EMA_SUFFIX)] = value
    replaced = {}
    for key, value in mapping.items():
        name = _bare(key)
        if name.endswith(EMA_SUFFIX):
            continue
        replaced[key] = shadows.get(name, value)
    return replaced, set(shadows)


def read_scope(
    mapping: Mapping[str, Any], scope: str, shadowed: set[str], options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]:
    """``(fields, options, the fields whose value is an EMA shadow)`` of one layer."""
    fields, merged = read_tf_variables(mapping, scope, **options)
    from_shadows = tuple(
        field for field in fields
        if f"{scope}/{TF_NAMES[field]}" in shadowed or f"{scope}/{scope}/{TF_NAMES[field]}" in shadowed
    )
    return fields, merged, from_shadows


def _bare(key: str) -> str:
    """A variable name without the suffixes a checkpoint may add."""
    for suffix in SUFFIXES[1:]:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key

"""Keras ``BatchNormalization`` layers read from ``.h5`` and ``.keras`` files with h5py.

A layer's config gives its options (``momentum`` is the decay, ``axis`` and the
input's rank the data format and whether Keras ran its fused kernel); its
weights come from the file's HDF5 data. ``bn_portable.porting`` is the public
face of this module.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

from ._fields import TF_NAMES
from ._keras_ranks import input_ranks
from ._options import EXECUTIONS
from ._variables import fields_and_options

BATCH_NORM_CLASSES = ("BatchNormalization", "SyncBatchNormalization")


def h5py_module() -> Any:
    try:
        import h5py  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        raise ImportError("reading Keras files needs h5py: pip install 'bn_portable[h5py]'") from None
    return h5py


class KerasFile:
    """A Keras file's model config and weights, open for reading (a context manager)."""

    def __init__(self, path: str | os.PathLike[str], model_config: Any = None) -> None:
        h5py = h5py_module()
        self.path = os.fspath(path)
        self.archive = zipfile.is_zipfile(self.path)
        if self.archive:
            with zipfile.ZipFile(self.path) as archive:
                stored: Any = json.loads(archive.read("config.json"))
                self._file = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        else:
            self._file = h5py.File(self.path, "r")
            text = self._file.attrs.get("model_config")
            stored = None if text is None else json.loads(_text(text))
        if model_config is not None:
            stored = json.loads(model_config) if isinstance(model_config, str) else model_config
            if not isinstance(stored, Mapping):
                raise TypeError(
                    "model_config must be the model's get_config() dict or to_json() string, "
                    f"got {type(model_config).__name__}"
                )
        self.model_config: Mapping[str, Any] | None = stored

    def __enter__(self) -> KerasFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def batch_norm_layers(self) -> Iterator[tuple[str, Mapping[str, Any], str]]:
        """``(name, layer config, weights path)`` of every batch norm, nested ones included."""
        if self.model_config is None:
            raise ValueError(
                f"{self.path} holds weights only (no model config), so its layers' momentum, "
                "epsilon and axis are unknown: pass model_config=model.get_config()"
            )
        for name, layer, where in _walk_layers(self.model_config, "layers"):
            if layer.get("class_name") in BATCH_NORM_CLASSES:
                yield name, layer, where

    def find_layer(self, layer_name: str) -> tuple[Mapping[str, Any], str]:
        for name, layer, where in _walk_layers(self.model_config or {}, "layers"):
            if name == layer_name:
                return layer, where
        raise ValueError(f"{self.path} has no layer named {layer_name!r}")

    def values(self, layer_name: str, layer: Mapping[str, Any] | None, where: str | None) -> dict[str, Any]:
        """The layer's weights by TensorFlow's names."""
        if self.archive:
            assert layer is not None and where is not None  # an archive always has its config
            return _keras_v3_values(self._file, where, layer, layer_name)
        return _h5_values(self._file, layer_name, self.path)

    def input_ranks(self, given: Mapping[str, int] | None = None) -> dict[str, int | None]:
        return input_ranks(self.model_config or {}, given)


def read_layer(
    file: KerasFile, name: str, layer: Mapping[str, Any] | None, where: str | None,
    input_rank: int | None, execution: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields, options)`` of one batch-norm layer of an open file."""
    if layer is None:
        raise ValueError(
            f"{file.path} holds weights only (no model config), so {name!r}'s momentum, "
            "epsilon and axis are unknown: pass config=layer.get_config()"
        )
    options = keras_options(layer, name, input_rank, execution)
    return fields_and_options(file.values(name, layer, where), options, f"layer {name!r} of {file.path}")


def keras_options(
    layer: Mapping[str, Any], layer_name: str, input_rank: int | None, execution: str
) -> dict[str, Any]:
    """batch_norm options reproducing a tf-keras ``BatchNormalization`` (TF2 behaviour)."""
    if layer.get("class_name") not in BATCH_NORM_CLASSES:
        raise ValueError(f"layer {layer_name!r} is a {layer.get('class_name')}, not a BatchNormalization")
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {', '.join(map(repr, EXECUTIONS))}; got {execution!r}")
    config = layer.get("config") or {}
    for name in ("virtual_batch_size", "adjustment"):
        if config.get(name) is not None:
            raise ValueError(f"layer {layer_name!r} uses {name}, which bn_portable does not implement")
    if config.get("synchronized") or layer["class_name"] == "SyncBatchNormalization":
        raise ValueError(f"layer {layer_name!r} synchronizes statistics across replicas; bn_portable does not")
    build = layer.get("build_config") or {}
    if input_rank is None and build.get("input_shape") is not None:
        input_rank = len(build["input_shape"])
    axis = config.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    if len(axes) != 1:
        raise ValueError(f"layer {layer_name!r} normalizes over several axes {axes}; bn_portable takes one")
    (axis,) = axes
    if input_rank is None and axis >= 2:
        input_rank = axis + 1  # the only supported layout with the channel there: channels last
    if input_rank is None:
        raise ValueError(
            f"layer {layer_name!r} has axis={axis}, which needs the input's rank to resolve "
            "(and Keras picks its fused kernel by rank): pass input_rank"
        )
    if isinstance(input_rank, bool) or not isinstance(input_rank, int) or input_rank not in (2, 3, 4, 5):
        raise ValueError(f"input_rank of layer {layer_name!r} must be 2, 3, 4 or 5, got {input_rank!r}")
    channel = axis % input_rank
    if channel not in (1, input_rank - 1):
        raise ValueError(
            f"layer {layer_name!r} normalizes axis {axis} of a rank-{input_rank} input; "
            "bn_portable takes channels on axis 1 or last"
        )
    renorm = bool(config.get("renorm", False))
    options: dict[str, Any] = {
        "decay": float(config.get("momentum", 0.99)),
        "epsilon": float(config.get("epsilon", 0.001)),
        "data_format": "NHWC" if channel == input_rank - 1 and input_rank > 2 else "NCHW",
        # Keras' fused=None (its default, and not saved): the fused kernel for rank 4 and 5.
        "fused": input_rank in (4, 5) and not renorm,
        "execution": execution,
    }
    if renorm:
        options["renorm_decay"] = float(config.get("renorm_momentum", 0.99))
        clipping = config.get("renorm_clipping")
        if clipping:
            options["renorm_clipping"] = {k: float(v) for k, v in clipping.items() if v is not None}
    return options


def _walk_layers(
    model_config: Mapping[str, Any], prefix: str
) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    """``(name, layer config, path of its weights in a .keras file)`` of every layer, nested
    models' layers after the model itself.

    The ``.keras`` format names each layer's weights by its class in snake case,
    numbered in the order of the model's layers (``batch_normalization_1``).
    """
    used: dict[str, int] = {}
    for layer in (model_config.get("config") or {}).get("layers") or []:
        snake = _snake_case(layer.get("class_name", ""))
        count = used.get(snake, -1) + 1
        used[snake] = count
        here = f"{prefix}/{snake}" + (f"_{count}" if count else "")
        yield str(layer.get("name") or (layer.get("config") or {}).get("name")), layer, here
        if (layer.get("config") or {}).get("layers") is not None:
            yield from _walk_layers(layer, here + "/layers")


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_v3_values(
    file: Any, layer_path: str, layer: Mapping[str, Any], layer_name: str
) -> dict[str, Any]:
    """A ``.keras`` layer's ``vars/0, 1, ...``: the layer's weights in Keras' order."""
    group = file.get(f"{layer_path}/vars")
    if group is None:
        raise ValueError(f"the weights file has no variables for layer {layer_name!r} ({layer_path})")
    config = layer.get("config") or {}
    names = [n for n, on in (("gamma", config.get("scale", True)), ("beta", config.get("center", True))) if on]
    names += ["moving_mean", "moving_variance"]
    if config.get("renorm"):
        names += ["moving_stddev", "renorm_mean", "renorm_stddev"]
    if len(group) != len(names):
        raise ValueError(
            f"layer {layer_name!r} has {len(group)} variables, but its config implies {names}"
        )
    return {name: group[str(i)][()] for i, name in enumerate(names)}


def _h5_values(file: Any, layer_name: str, path: str) -> dict[str, Any]:
    """A Keras HDF5 layer's weights by name (``<layer>/<layer>/gamma:0`` ...)."""
    root = file.get("model_weights", file)
    values: dict[str, Any] = {}
    for group_name in ([layer_name] if layer_name in root else list(root)):
        group = root[group_name]
        for weight_name in (_text(n) for n in group.attrs.get("weight_names", ())):
            owner, _, variable = weight_name.rpartition("/")
            if owner.rpartition("/")[2] != layer_name:  # a nested model's group holds others too
                continue
            variable = variable.removesuffix(":0")
            if variable in TF_NAMES:
                values[variable] = group[weight_name][()]
        if values:
            return values
    raise ValueError(f"{path} has no weights for a layer named {layer_name!r}")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)

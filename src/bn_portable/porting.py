"""Porting helpers: a TensorFlow model's batch-norm variables as a ``BatchNormState``.

Each helper returns ``(state, options)``: the variables under
``BatchNormState``'s field names, and the ``batch_norm`` keyword arguments that
make bn_portable compute what the TensorFlow layer computed.

- ``state_from_tf_variables(mapping, scope, **options)`` (also
  ``BatchNormState.from_tf_variables``): a dict of variables as a checkpoint
  reader returns them (``tf.train.load_checkpoint``), tf-slim or Keras names.
  A checkpoint holds values, not the layer's configuration: ``center``,
  ``scale``, ``zero_debias_moving_mean`` and ``renorm`` follow from which
  variables exist; ``decay``, ``epsilon``, ``data_format``, ``fused``... are
  the model code's and are passed through ``options`` (checked here).
- ``load_keras_batch_norm(path, layer_name)``: one ``BatchNormalization`` layer
  of a Keras ``.h5`` (full model or weights only) or ``.keras`` file, read with
  h5py (the ``h5py`` extra). The layer's config, stored in full-model files,
  gives every option (``momentum`` is the decay, ``axis`` the data format, the
  input rank whether Keras used its fused kernel).

Values come back as the file holds them (NumPy arrays, TensorFlow's dtypes);
``bn_portable.torch.BatchNorm.from_state`` takes them as they are, and for
other libraries convert each field (``state._replace(...)``, or
``jax.tree.map(jnp.asarray, state)``: a ``BatchNormState`` is a pytree).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any

from ._tf._fields import TF_NAMES
from ._tf._state import BatchNormState
from ._tf._variables import fields_and_options, read_tf_variables


def state_from_tf_variables(
    mapping: Mapping[str, Any], scope: str, **options: Any
) -> tuple[BatchNormState, dict[str, Any]]:
    """The layer under ``scope`` of a checkpoint's ``{name: value}`` dict.

    Names are looked up as ``scope/gamma``, ``scope/beta``, ``scope/moving_mean``,
    ``scope/moving_variance``, renorm's ``scope/moving_stddev``,
    ``scope/renorm_mean``, ``scope/renorm_stddev``, and zero-debiasing's
    ``scope/scope/moving_mean/biased`` and ``scope/scope/moving_mean/local_step``
    (TensorFlow creates those under the moving mean's full name, hence the
    repeated scope; ``scope/moving_mean/biased`` is accepted too), each with or
    without a ``:0`` or ``/.ATTRIBUTES/VARIABLE_VALUE`` suffix. ``options`` are
    further ``batch_norm`` options of the TensorFlow model (``decay``,
    ``epsilon``, ``fused``, ``data_format``...); the result's options hold them
    and the four the variables decide.
    """
    fields, merged = read_tf_variables(mapping, scope, **options)
    return BatchNormState(**fields), merged


def load_keras_batch_norm(
    path: str | os.PathLike[str],
    layer_name: str,
    *,
    input_rank: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> tuple[BatchNormState, dict[str, Any]]:
    """One ``BatchNormalization`` layer of a Keras ``.h5`` or ``.keras`` file.

    ``config`` (the layer's ``get_config()``) is needed for a weights-only
    ``.h5`` (``model.save_weights``), which stores no configuration; full-model
    files have it. ``input_rank`` (the rank of the layer's input, batch axis
    included) decides whether Keras ran its fused kernel (ranks 4 and 5) and
    which axis ``axis`` means; it is read from a ``.keras`` file's build config
    and needed otherwise only where ``axis`` leaves it open (``axis=1``,
    negative axes). Options Keras does not store (an explicit ``fused=False``)
    are Keras' defaults.
    """
    try:
        import h5py  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        raise ImportError(
            "load_keras_batch_norm reads HDF5 files with h5py: pip install 'bn_portable[h5py]'"
        ) from None
    path = os.fspath(path)
    if not isinstance(layer_name, str):
        raise TypeError(f"layer_name must be a str, got {type(layer_name).__name__}")
    layer: dict[str, Any] | None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            model_config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5")
        with h5py.File(io.BytesIO(weights), "r") as file:
            layer, layer_path = _find_layer(model_config, layer_name, path)
            values = _keras_v3_values(file, layer_path, layer, layer_name)
    else:
        with h5py.File(path, "r") as file:
            stored = file.attrs.get("model_config")
            model_config = None if stored is None else json.loads(_text(stored))
            layer = None if model_config is None else _find_layer(model_config, layer_name, path)[0]
            values = _h5_values(file, layer_name, path)
    if config is not None:
        layer = {"class_name": "BatchNormalization", "config": dict(config)}
    if layer is None:
        raise ValueError(
            f"{path} holds weights only (no model config), so {layer_name!r}'s momentum, "
            "epsilon and axis are unknown: pass config=layer.get_config()"
        )
    options = _keras_options(layer, layer_name, input_rank)
    fields, merged = fields_and_options(values, options, f"layer {layer_name!r} of {path}")
    return BatchNormState(**fields), merged


def _keras_options(
    layer: Mapping[str, Any], layer_name: str, input_rank: int | None
) -> dict[str, Any]:
    """batch_norm options reproducing a tf-keras ``BatchNormalization`` (TF2 behaviour)."""
    if layer.get("class_name") not in ("BatchNormalization", "SyncBatchNormalization"):
        raise ValueError(f"layer {layer_name!r} is a {layer.get('class_name')}, not a BatchNormalization")
    config = layer["config"]
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
        raise ValueError(f"input_rank must be 2, 3, 4 or 5, got {input_rank!r}")
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
    }
    if renorm:
        options["renorm_decay"] = float(config.get("renorm_momentum", 0.99))
        clipping = config.get("renorm_clipping")
        if clipping:
            options["renorm_clipping"] = {k: float(v) for k, v in clipping.items() if v is not None}
    return options


def _find_layer(
    model_config: Mapping[str, Any], layer_name: str, path: str, prefix: str = "layers"
) -> tuple[dict[str, Any], str]:
    """``(layer config, path of its weights in a .keras file)``, searching nested models.

    The ``.keras`` format names each layer's weights by its class in snake case,
    numbered in the order of the model's layers (``batch_normalization_1``).
    """
    layers = (model_config.get("config") or {}).get("layers") or []
    used: dict[str, int] = {}
    for layer in layers:
        snake = _snake_case(layer.get("class_name", ""))
        count = used.get(snake, -1) + 1
        used[snake] = count
        here = f"{prefix}/{snake}" + (f"_{count}" if count else "")
        name = layer.get("name") or (layer.get("config") or {}).get("name")
        if name == layer_name:
            return layer, here
        if (layer.get("config") or {}).get("layers") is not None:
            try:
                return _find_layer(layer, layer_name, path, here + "/layers")
            except ValueError:
                pass
    raise ValueError(f"{path} has no layer named {layer_name!r}")


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


__all__ = ["load_keras_batch_norm", "state_from_tf_variables"]

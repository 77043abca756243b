"""The rank of every layer's input in a Keras model config, for files that do not store it.

A ``.keras`` archive records each layer's input shape (``build_config``); a
full-model ``.h5`` records only the model inputs' shapes and the graph. The
rank of a batch norm's input decides whether Keras ran its fused kernel (ranks
4 and 5) and what ``axis=[1]`` means, so it is followed through the graph here:
most layers keep their input's rank, a few set it, and a layer this table does
not know makes the ranks after it unknown (the caller then asks for them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

#: Layers whose output has the rank of their (highest-rank) input.
_SAME_RANK = frozenset(
    """Activation ActivityRegularization Add AlphaDropout Average AveragePooling1D
    AveragePooling2D AveragePooling3D BatchNormalization Concatenate Conv1D
    Conv1DTranspose Conv2D Conv2DTranspose Conv3D Conv3DTranspose Cropping1D Cropping2D
    Cropping3D Dense DepthwiseConv1D DepthwiseConv2D Dropout ELU GaussianDropout
    GaussianNoise Identity LayerNormalization LeakyReLU Masking MaxPooling1D
    MaxPooling2D MaxPooling3D Maximum Minimum Multiply Normalization Permute PReLU ReLU
    Rescaling SeparableConv1D SeparableConv2D Softmax SpatialDropout1D SpatialDropout2D
    SpatialDropout3D Subtract SyncBatchNormalization UpSampling1D UpSampling2D
    UpSampling3D ZeroPadding1D ZeroPadding2D ZeroPadding3D""".split()  # noqa: SIM905
)
_GLOBAL_POOLING = frozenset(
    f"Global{kind}Pooling{d}D" for kind in ("Average", "Max") for d in (1, 2, 3)
)


def input_ranks(model: Mapping[str, Any], given: Mapping[str, int] | None = None) -> dict[str, int | None]:
    """``{layer name: rank of its input or None}`` for every layer of a model config, nested
    models included (their layers by their own names). ``given`` fixes some ranks."""
    ranks: dict[str, int | None] = {}
    _walk(model, None, ranks)
    ranks.update(given or {})
    return ranks


def _walk(model: Mapping[str, Any], outer: int | None, ranks: dict[str, int | None]) -> int | None:
    """Fill ``ranks`` for ``model``'s layers; return its output rank. ``outer`` is the rank
    of the model's input where the enclosing model knows it."""
    layers = list(_layers(model))
    if model.get("class_name") == "Sequential" or not any("inbound_nodes" in layer for layer in layers):
        rank = _declared(model.get("config") or {})
        rank = outer if rank is None else rank
        for layer in layers:
            rank = _declared(layer.get("config") or {}, rank)
            ranks[_name(layer)] = rank
            rank = _output(layer, [rank], ranks)
        return rank
    outputs: dict[str, int | None] = {}
    for _ in range(len(layers)):  # the config lists layers in order; repeat until settled
        before = dict(outputs)
        for layer in layers:
            inbound = [outputs.get(source) for source in _sources(layer)]
            if layer.get("class_name") == "InputLayer":
                rank = _declared(layer.get("config") or {}, outer)
            else:
                rank = None if not inbound or None in inbound else max(r for r in inbound if r)
            ranks[_name(layer)] = rank
            outputs[_name(layer)] = _output(layer, [rank], ranks)
        if outputs == before:
            break
    ends = [outputs.get(_name_of(entry)) for entry in (model.get("config") or {}).get("output_layers") or []]
    return ends[0] if len(ends) == 1 else None


def _output(layer: Mapping[str, Any], inputs: list[int | None], ranks: dict[str, int | None]) -> int | None:
    """The rank of a layer's output, from its inputs' ranks and its config."""
    (rank,) = inputs
    kind, config = layer.get("class_name", ""), layer.get("config") or {}
    if config.get("layers") is not None:
        return _walk(layer, rank, ranks)
    if kind in _SAME_RANK:
        return rank
    if kind in _GLOBAL_POOLING:
        return rank if config.get("keepdims") else 2
    if kind == "Flatten":
        return 2
    if kind == "Reshape":
        return len(config["target_shape"]) + 1
    if kind == "InputLayer":
        return rank
    return None


def _declared(config: Mapping[str, Any], default: int | None = None) -> int | None:
    """The rank a layer or model config declares for its input, if it does."""
    for key in ("batch_input_shape", "batch_shape"):
        if config.get(key) is not None:
            return len(config[key])
    return default


def _layers(model: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from (model.get("config") or {}).get("layers") or []


def _name(layer: Mapping[str, Any]) -> str:
    return str(layer.get("name") or (layer.get("config") or {}).get("name"))


def _sources(layer: Mapping[str, Any]) -> list[str]:
    """The names of the layers feeding ``layer``'s first call (Keras 2's inbound_nodes)."""
    nodes = layer.get("inbound_nodes") or []
    if not nodes:
        return []
    first = nodes[0]
    if isinstance(first, Mapping):  # Keras 3's {"args": [...], "kwargs": {...}}
        return [_name_of(arg) for arg in _keras_tensors(first)]
    return [_name_of(entry) for entry in first]


def _keras_tensors(node: Mapping[str, Any]) -> Iterator[Any]:
    stack = list(node.get("args") or [])
    while stack:
        item = stack.pop(0)
        if isinstance(item, Mapping) and item.get("class_name") == "__keras_tensor__":
            yield item["config"]["keras_history"]
        elif isinstance(item, list):
            stack.extend(item)


def _name_of(entry: Any) -> str:
    return str(entry[0])

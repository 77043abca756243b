"""Porting helpers: a TensorFlow model's batch-norm variables as ``BatchNormState`` values.

Each helper returns ``(state, options)`` per layer: the variables under
``BatchNormState``'s field names, and the ``batch_norm`` keyword arguments that
make bn_portable compute what the TensorFlow layer computed.

- ``load_keras_batch_norms(path)``: every ``BatchNormalization`` layer of a
  Keras ``.h5`` or ``.keras`` file (nested models included), as
  ``{layer name: (state, options)}``; ``load_keras_batch_norm(path, name)``
  reads one. The layers' configs give every option (``momentum`` is the decay,
  ``axis`` and the input's rank the data format and whether Keras used its
  fused kernel), read with h5py (the ``h5py`` extra).
- ``find_tf_batch_norms(mapping)``: every batch-norm layer of a checkpoint's
  ``{name: value}`` dict (``tf.train.load_checkpoint``), tf-slim or Keras
  names, with ``ema=True`` the ``ExponentialMovingAverage`` shadow values;
  ``state_from_tf_variables(mapping, scope)`` (also
  ``BatchNormState.from_tf_variables``) reads one scope. A checkpoint holds
  values, not the layer's configuration: ``center``, ``scale``,
  ``zero_debias_moving_mean`` and ``renorm`` follow from which variables
  exist; ``decay``, ``epsilon``, ``data_format``, ``fused``... are the model
  code's and are passed as options (checked here).

``execution`` (a ``batch_norm`` option) is how the TensorFlow program ran; it
changes the last bits of the Keras fused path's moving averages. The Keras
readers return ``"eager"`` unless told otherwise (Keras 2 as ``fit``, eager
calls and ``tf.function`` run it); pass ``"xla"`` for a model trained with
``jit_compile=True`` and ``"graph"`` for TF1 graph mode.

Values come back as the file holds them (NumPy arrays, TensorFlow's dtypes);
``bn_portable.torch.convert_batch_norms`` and ``BatchNorm.from_state`` of
``bn_portable.torch`` and ``bn_portable.flax`` take them as they are; for
other libraries convert each field (``state._replace(...)``, or
``jax.tree.map(jnp.asarray, state)``: a ``BatchNormState`` is a pytree).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ._tf._checkpoints import batch_norm_scopes, read_scope, with_shadows
from ._tf._keras_files import KerasFile, read_layer
from ._tf._state import BatchNormState
from ._tf._variables import read_tf_variables

#: ``(state, options)`` of one layer.
Layer = tuple[BatchNormState, dict[str, Any]]


class BatchNormLayers(dict[str, Layer]):
    """``{layer name: (state, options)}`` for every batch-norm layer a helper found.

    ``without_ema`` names the layers for which ``find_tf_batch_norms(...,
    ema=True)`` found no ``ExponentialMovingAverage`` shadow variable (their raw
    values are used); it is empty otherwise.
    """

    without_ema: tuple[str, ...] = ()


def state_from_tf_variables(mapping: Mapping[str, Any], scope: str, **options: Any) -> Layer:
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


def find_tf_batch_norms(
    mapping: Mapping[str, Any],
    *,
    ema: bool = False,
    layer_options: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> BatchNormLayers:
    """Every batch-norm layer of a checkpoint's ``{name: value}`` dict, by scope.

    A layer is a scope with a ``moving_variance`` variable; each is read as
    ``state_from_tf_variables`` reads one. ``options`` (``decay``, ``epsilon``,
    ``fused``, ``data_format``...: what a checkpoint cannot hold) apply to every
    layer; ``layer_options`` maps scopes to options of that layer only, over
    ``options``. With ``ema=True`` each variable that has an
    ``ExponentialMovingAverage`` shadow (``<name>/ExponentialMovingAverage``)
    is read from it, as a model trained with ``tf.train.ExponentialMovingAverage``
    is evaluated; the result's ``without_ema`` lists the layers with no shadow.

    Examples
    --------
    >>> import numpy as np
    >>> from bn_portable.porting import find_tf_batch_norms
    >>> ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    >>> checkpoint = {  # what tf.train.load_checkpoint(...) reads, as a dict
    ...     "net/conv1/BatchNorm/beta": zeros, "net/conv1/BatchNorm/moving_mean": zeros,
    ...     "net/conv1/BatchNorm/moving_variance": ones,
    ...     "net/conv1/BatchNorm/moving_mean/ExponentialMovingAverage": ones,
    ...     "net/conv2/BatchNorm/beta": zeros, "net/conv2/BatchNorm/moving_mean": zeros,
    ...     "net/conv2/BatchNorm/moving_variance": ones,
    ... }
    >>> layers = find_tf_batch_norms(checkpoint, ema=True, decay=0.997, fused=True)
    >>> sorted(layers)
    ['net/conv1/BatchNorm', 'net/conv2/BatchNorm']
    >>> state, options = layers["net/conv1/BatchNorm"]
    >>> print(state.moving_mean, options["decay"], options["center"], options["scale"])
    [1. 1.] 0.997 True False
    >>> layers.without_ema
    ('net/conv2/BatchNorm',)
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a dict of variable names to arrays, got {type(mapping).__name__}")
    if not isinstance(ema, bool):
        raise TypeError(f"ema must be a bool, got {type(ema).__name__}")
    scopes = batch_norm_scopes(mapping)
    per_layer = dict(layer_options or {})
    unknown = sorted(set(per_layer) - set(scopes))
    if unknown:
        raise ValueError(
            f"layer_options names {', '.join(map(repr, unknown))}, which the mapping has no "
            f"batch-norm layer for; its layers: {scopes}"
        )
    values, shadowed = with_shadows(mapping) if ema else (dict(mapping), set())
    found = BatchNormLayers()
    without = []
    for scope in scopes:
        fields, merged, from_shadows = read_scope(values, scope, shadowed, {**options, **per_layer.get(scope, {})})
        found[scope] = (BatchNormState(**fields), merged)
        if ema and not from_shadows:
            without.append(scope)
    found.without_ema = tuple(without)
    return found


def load_keras_batch_norms(
    path: str | os.PathLike[str],
    *,
    execution: str = "eager",
    model_config: Mapping[str, Any] | str | None = None,
    input_ranks: Mapping[str, int] | None = None,
) -> BatchNormLayers:
    """Every ``BatchNormalization`` layer of a Keras ``.h5`` or ``.keras`` file, by layer name.

    Nested models' layers are included (under their own names). Each layer's
    options come from its config and its input's rank: a ``.keras`` archive
    records the rank, and for an ``.h5`` it is followed through the model's
    graph from the inputs' shapes; ``input_ranks`` (``{layer name: rank}``)
    gives it where that fails (a custom layer before an ``axis=1`` batch norm).
    A weights-only ``.h5`` (``model.save_weights``) needs ``model_config``
    (``model.get_config()`` or ``model.to_json()``). ``execution`` is how the
    model was trained (``"eager"``: Keras 2's ``fit``, eager calls and
    ``tf.function``; ``"xla"``: ``jit_compile=True``; ``"graph"``: TF1).

    Examples
    --------
    >>> from bn_portable.porting import load_keras_batch_norms
    >>> layers = load_keras_batch_norms("tests/data/porting/keras_model.h5")
    >>> sorted(layers)
    ['bn_conv', 'bn_dense', 'bn_inner', 'bn_nchw', 'bn_renorm']
    >>> state, options = layers["bn_nchw"]  # axis=1 of a rank-4 input, read from the graph
    >>> options
    {'decay': 0.8, 'epsilon': 0.001, 'data_format': 'NCHW', 'fused': True, 'execution': 'eager', 'center': True, 'scale': True, 'zero_debias_moving_mean': False, 'renorm': False}
    >>> state.moving_variance.shape
    (3,)
    """
    with KerasFile(path, model_config) as file:
        ranks = file.input_ranks(input_ranks)
        found = BatchNormLayers()
        for name, layer, where in file.batch_norm_layers():
            fields, options = read_layer(file, name, layer, where, ranks.get(name), execution)
            found[name] = (BatchNormState(**fields), options)
    return found


def load_keras_batch_norm(
    path: str | os.PathLike[str],
    layer_name: str,
    *,
    input_rank: int | None = None,
    config: Mapping[str, Any] | None = None,
    execution: str = "eager",
) -> Layer:
    """One ``BatchNormalization`` layer of a Keras ``.h5`` or ``.keras`` file.

    ``config`` (the layer's ``get_config()``) is needed for a weights-only
    ``.h5`` (``model.save_weights``), which stores no configuration; full-model
    files have it. ``input_rank`` (the rank of the layer's input, batch axis
    included) decides whether Keras ran its fused kernel (ranks 4 and 5) and
    which axis ``axis`` means; it is read from the file where it can be (as
    ``load_keras_batch_norms`` reads it) and needed otherwise only where
    ``axis`` leaves it open (``axis=1``, negative axes). Options Keras does not store (an explicit ``fused=False``)
    are Keras' defaults; ``execution`` is as in ``load_keras_batch_norms``.
    """
    if not isinstance(layer_name, str):
        raise TypeError(f"layer_name must be a str, got {type(layer_name).__name__}")
    with KerasFile(path) as file:
        layer: Mapping[str, Any] | None = None
        where = None
        if file.model_config is not None:
            layer, where = file.find_layer(layer_name)
            if input_rank is None:
                input_rank = file.input_ranks().get(layer_name)
        if config is not None:
            layer = {"class_name": "BatchNormalization", "config": dict(config)}
        fields, options = read_layer(file, layer_name, layer, where, input_rank, execution)
    return BatchNormState(**fields), options


__all__ = [
    "BatchNormLayers",
    "find_tf_batch_norms",
    "load_keras_batch_norm",
    "load_keras_batch_norms",
    "state_from_tf_variables",
]

"""Other frameworks' batch norms, exactly, on every array-API backend.

Each function reproduces one framework's convention (its defaults, which batch
variance its running variance moves toward, how its momentum weighs the old and
new values, its half-precision rule) functionally: the new statistics are
returned, nothing is mutated, so the functions trace under ``jax.jit`` and
``torch.compile(fullgraph=True)`` and stay lazy on Dask. Each is checked against
goldens the framework itself computes (``conformance/conventions``).

- ``pytorch_batch_norm``: ``torch.nn.functional.batch_norm`` and ``nn.BatchNorm1d/2d/3d``
  (channels on axis 1).
- ``onnx_batch_norm``: ONNX's ``BatchNormalization`` (opset 15), as ONNX Runtime runs it.
- ``keras_batch_norm``: Keras 3's ``BatchNormalization``.
- ``flax_batch_norm``: Flax's ``BatchNorm``.
- ``convert_state``: a batch norm's state and settings moved between these conventions
  and TensorFlow's.
"""

from __future__ import annotations

from ._conventions._flax import flax_batch_norm
from ._conventions._keras import keras_batch_norm
from ._conventions._onnx import onnx_batch_norm
from ._conventions._pytorch import pytorch_batch_norm
from ._conventions._states import ConvertedState, convert_state

__all__ = [
    "ConvertedState",
    "convert_state",
    "flax_batch_norm",
    "keras_batch_norm",
    "onnx_batch_norm",
    "pytorch_batch_norm",
]

"""TensorFlow's batch normalization, exactly, on every array-API backend.

One implementation, written against the Python array API standard, runs on
NumPy, CuPy, PyTorch, JAX, Dask and array-api-strict and reproduces the numbers
of ``tf.nn`` and ``tf.contrib.layers.batch_norm`` (checked against goldens that
TensorFlow generated).
"""

from ._grad import batch_norm_vjp, fused_batch_norm_grad
from ._layer import batch_norm
from ._moments import moments, weighted_moments
from ._native import fast_paths, fast_paths_enabled
from ._normalize import batch_normalization, fused_batch_norm
from ._partial_moments import PartialMoments, merge_moments, partial_moments
from ._recalibrate import recalibrate
from ._tf._state import BatchNormState

__version__ = "0.1.0"

__all__ = [
    "BatchNormState",
    "PartialMoments",
    "__version__",
    "batch_norm",
    "batch_norm_vjp",
    "batch_normalization",
    "fast_paths",
    "fast_paths_enabled",
    "fused_batch_norm",
    "fused_batch_norm_grad",
    "merge_moments",
    "moments",
    "partial_moments",
    "recalibrate",
    "weighted_moments",
]

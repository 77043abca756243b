"""tf-slim 1.1.0 on TensorFlow 2.15: the three compatibility patches, in one place.

Used by the golden generator and the checkpoint generator, in TensorFlow's own
environment only (see docs/tensorflow-semantics.md for why each is needed):
tf-slim imports tf-keras' legacy layers from their pre-2.15 module path, and
calls ``ops.Tensor`` and ``control_flow_ops.cond``, which TensorFlow 2.15 moved.
None of them changes what a layer computes.
"""

from __future__ import annotations

import sys
from typing import Any


def import_tf_slim(tf: Any) -> Any:
    """``tf_slim``, imported after patching what TensorFlow 2.15 moved."""
    import tf_keras.src.legacy_tf_layers as legacy_layers
    import tf_keras.src.legacy_tf_layers.normalization as legacy_normalization

    sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy_layers)
    sys.modules.setdefault("tf_keras.legacy_tf_layers.normalization", legacy_normalization)
    from tensorflow.python.framework import ops, tensor

    if not hasattr(ops, "Tensor"):
        ops.Tensor = tensor.Tensor
    from tensorflow.python.ops import control_flow_ops

    if not hasattr(control_flow_ops, "cond"):
        control_flow_ops.cond = tf.cond
    import tf_slim

    return tf_slim

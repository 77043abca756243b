"""TensorFlow as the golden generator runs it: graph mode, one thread, fed placeholders.

TensorFlow is imported on first use (``tf_modules``), so that only the processes
that run cases pay for it; the environment below must be set before that import,
in the main process and in every worker. ``SETTINGS`` describes all of this in
the goldens' manifest.
"""

from __future__ import annotations

import os
import platform
import re

# Must be set before TensorFlow is imported (here, in the workers, anywhere).
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from conformance.tf_slim_compat import import_tf_slim

SESSION_THREADS = 1
FUSED_FORWARD_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})

SETTINGS = {
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "intra_op_parallelism_threads": SESSION_THREADS,
    "inter_op_parallelism_threads": SESSION_THREADS,
    "execution": "graph mode (tf.compat.v1.disable_eager_execution), fresh tf.Graph and "
    "Session per case, default grappler and autograph",
    "inputs": "every input array is fed through a placeholder of its full static shape",
    "tf_slim_patches": [
        "sys.modules['tf_keras.legacy_tf_layers'(.normalization)] -> tf_keras.src.legacy_tf_layers",
        "tensorflow.python.framework.ops.Tensor = tensorflow.python.framework.tensor.Tensor",
        "tensorflow.python.ops.control_flow_ops.cond = tf.cond",
    ],
    "batch_norm_steps": "training step: sess.run([y] + UPDATE_OPS); inference step: "
    "sess.run(y) on a second call with reuse=True (same variables); variables read after "
    "every step",
}


_TF = {}


def tf_modules():
    """``(tensorflow, tf_slim)``, imported and set up once per process."""
    if _TF:
        return _TF["tf"], _TF["slim"]
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    tf.get_logger().setLevel("ERROR")
    import importlib

    tf_slim = import_tf_slim(tf)
    slim_layers = importlib.import_module("tf_slim.layers.layers")

    # Spy (no behaviour change): record when tf-slim takes its own fused path.
    original = slim_layers._fused_batch_norm

    def spying_fused_batch_norm(*args, **kwargs):
        _TF["slim_fused_calls"] += 1
        return original(*args, **kwargs)

    slim_layers._fused_batch_norm = spying_fused_batch_norm
    _TF.update(tf=tf, slim=tf_slim, slim_fused_calls=0)
    return tf, tf_slim


def slim_fused_calls(reset: bool = False) -> int:
    """How often tf-slim took its own fused path since the last reset (``reset``: start again)."""
    if reset:
        _TF["slim_fused_calls"] = 0
    return _TF["slim_fused_calls"]


def versions() -> dict:
    """The versions of everything that produced the goldens, for the manifest."""
    from importlib import metadata

    tf, _ = tf_modules()
    import ml_dtypes
    import tf_keras

    return {
        "ml_dtypes": ml_dtypes.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "tf_slim": metadata.version("tf-slim"),
    }


def session(tf, graph):
    """A session on ``graph`` with ``SESSION_THREADS`` threads (results do not depend on scheduling)."""
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=SESSION_THREADS,
        inter_op_parallelism_threads=SESSION_THREADS,
    )
    return tf.compat.v1.Session(graph=graph, config=config)


class Feeder:
    """Placeholders with full static shapes, and their feed dict."""

    def __init__(self, tf):
        self.tf = tf
        self.feed = {}

    def __call__(self, array, name):
        ph = self.tf.compat.v1.placeholder(
            self.tf.as_dtype(array.dtype), shape=array.shape, name=name.replace("/", "_")
        )
        self.feed[ph] = array
        return ph


def fused_ops(graph):
    """The fused batch-norm kernels in ``graph``: whether TensorFlow took a fused path."""
    return sorted({op.type for op in graph.get_operations() if op.type in FUSED_FORWARD_OPS})


def _clean_message(message: str) -> str:
    """TF's message without autograph frames, node tracebacks or addresses."""
    text = message.strip()
    if text.startswith("in user code:"):
        text = text.split("\n\n")[-1].strip()
    if "\nNode: '" in text:  # session.run errors: keep the kernel's own message
        text = text.split("\nNode: '", 1)[1].split("\n", 1)[1]
    text = re.split(r"\n\s*\[\[|\n+\s*Detected at node|\n+Original stack trace", text)[0]
    text = re.sub(r"0x[0-9a-fA-F]+", "0x?", text)
    text = re.sub(r"^\w+(Error|Exception): ", "", text)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def error_record(exc: BaseException) -> dict:
    """A TensorFlow exception as the goldens record it: its class and cleaned message."""
    return {
        "class": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": _clean_message(str(exc)),
    }

"""The kernel benchmark's cases: what it times (shapes, layouts, dtypes, operations).

``bench.py`` builds one ``Case`` per combination; the implementation builders
(``_kernel_numpy.py``, ``_kernel_torch.py``, ``_kernel_tf_jax.py``) take their
inputs from it and the plots group by the same names. They live here rather
than in the script so that those modules can import them without importing
the script a second time.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-3

#: (name, NCHW shape, NHWC shape); the rank-2 MLP batches (N×C) run the fused
#: op as their rank-4 twins (N, C, 1, 1) and (N, 1, 1, C), TensorFlow's own
#: reshape for the fused kernel, and the training step as rank 2 itself.
SHAPES = [
    ("64x64", (64, 64, 1, 1), (64, 1, 1, 64)),
    ("256x512", (256, 512, 1, 1), (256, 1, 1, 512)),
    ("128x1024", (128, 1024, 1, 1), (128, 1, 1, 1024)),
    ("8x32x16x16", (8, 32, 16, 16), (8, 16, 16, 32)),
    ("16x64x28x28", (16, 64, 28, 28), (16, 28, 28, 64)),
    ("32x64x56x56", (32, 64, 56, 56), (32, 56, 56, 64)),
]
MLP_SHAPES = ("64x64", "256x512", "128x1024")
QUICK_SHAPES = ("64x64", "256x512", "8x32x16x16", "32x64x56x56")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16")
#: ``step``: the layer's forward and backward with autograd (torch only), eager
#: and under ``torch.compile`` (float32).
OPERATIONS = ("train", "infer", "backward", "step")
REFERENCE = "torch native"
TARGET_SHAPE = "32x64x56x56"


class Case:
    """One operation on one input: the data every implementation shares."""

    def __init__(self, operation: str, shape_name: str, layout: str, dtype: str, shape: tuple):
        self.operation, self.shape_name, self.layout, self.dtype = (
            operation,
            shape_name,
            layout,
            dtype,
        )
        self.shape = shape
        self.channel = 1 if layout == "NCHW" else len(shape) - 1
        self.channels = shape[self.channel]
        self.axes = tuple(a for a in range(len(shape)) if a != self.channel)
        rng = np.random.default_rng(0)
        self.x = rng.normal(0.5, 1.5, size=shape).astype(dtype)
        self.dy = rng.normal(0.0, 1.0, size=shape).astype(dtype)
        self.scale = rng.uniform(0.5, 1.5, self.channels).astype(np.float32)
        self.offset = rng.normal(0.0, 1.0, self.channels).astype(np.float32)
        x64 = self.x.astype(np.float64)
        self.mean = x64.mean(axis=self.axes).astype(np.float32)
        self.variance = x64.var(axis=self.axes).astype(np.float32)

    @property
    def key(self) -> str:
        return f"{self.operation}/{self.shape_name}/{self.layout}/{self.dtype}"

    def broadcast(self, vector, rank=None):
        rank = rank or len(self.shape)
        shape = [1] * rank
        shape[self.channel] = -1
        return vector.reshape(shape)

"""Under ``jax.jit`` a centred training step keeps no input-sized array but y.

TensorFlow's fused kernel and the PyTorch, ONNX and Flax (two-pass) conventions
subtract the batch mean from x for the statistics and again for y; XLA merges the
two subtractions and then writes the difference out and reads it back (its
reduction fusion takes it from memory), a whole pass more. ``optimization_barrier``
on y's mean keeps them apart. These tests read XLA's optimized program: an
input-sized array in it is a pass over memory.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import bn_portable as bn
from bn_portable import conventions
from bn_portable._lib._backends import optimization_barrier

jax = pytest.importorskip("jax", reason="the JAX tests need JAX, which is not installed")
jnp = jax.numpy

SHAPE = (8, 16, 16, 32)  # NHWC
OPTIONS = {"decay": 0.99, "epsilon": 1e-5, "scale": True, "data_format": "NHWC", "fused": True}


def _inputs() -> tuple[object, bn.BatchNormState]:
    x = jax.random.normal(jax.random.key(0), SHAPE) * 1.5 + 0.5
    channels = SHAPE[-1]
    state = bn.BatchNormState(
        moving_mean=jnp.zeros(channels), moving_variance=jnp.ones(channels),
        gamma=jnp.ones(channels), beta=jnp.zeros(channels),
    )
    return x, state


def _input_sized_arrays(step, x, *arguments) -> list[str]:
    """The optimized program's instructions (outside fusions) that make an array of x's shape."""
    text = jax.jit(step).lower(x, *arguments).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    shape = "f32[" + ",".join(map(str, x.shape)) + "]"
    return [line for line in entry.splitlines()[1:] if re.search(r"= " + re.escape(shape) + r"[{ ]", line)
            and "parameter(" not in line]


@pytest.mark.parametrize("replicas", [False, True], ids=["one batch", "cross-replica statistics"])
def test_the_fused_training_step_makes_y_only(replicas: bool) -> None:
    x, state = _inputs()
    options = dict(OPTIONS, cross_replica_sum=(lambda total: total) if replicas else None)

    def step(x, state):
        return bn.batch_norm(x, state, **options)

    made = _input_sized_arrays(step, x, state)
    assert len(made) == 1, made  # y, and no x − mean kept in memory


#: Each convention's training step on x in its layout (channels first for PyTorch and ONNX).
CONVENTIONS = {
    "flax two-pass": lambda x, z, o: conventions.flax_batch_norm(x, z, o, o, z, use_fast_variance=False),
    "flax": lambda x, z, o: conventions.flax_batch_norm(x, z, o, o, z),
    "keras": lambda x, z, o: conventions.keras_batch_norm(x, z, o, o, z, training=True),
    "pytorch": lambda x, z, o: conventions.pytorch_batch_norm(x, z, o, o, z, training=True),
    "onnx": lambda x, z, o: conventions.onnx_batch_norm(x, o, z, z, o, training_mode=True),
}


@pytest.mark.parametrize("name", CONVENTIONS)
def test_every_convention_s_training_step_makes_y_only(name: str) -> None:
    x, _ = _inputs()
    if name in ("pytorch", "onnx"):
        x = jnp.moveaxis(x, -1, 1)
    channels = SHAPE[-1]
    made = _input_sized_arrays(CONVENTIONS[name], x, jnp.zeros(channels), jnp.ones(channels))
    assert len(made) == 1, made


def test_the_barrier_changes_no_value() -> None:
    x, state = _inputs()
    values = np.asarray(x)
    assert optimization_barrier(values, bn._lib._compat.array_namespace(values)) is values
    y, new_state = jax.jit(lambda x, state: bn.batch_norm(x, state, **OPTIONS))(x, state)
    eager, eager_state = bn.batch_norm(x, state, **OPTIONS)
    x64 = np.asarray(x, np.float64)
    mean, variance = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    truth = (x64 - mean) / np.sqrt(variance + np.float32(1e-5))
    for result in (y, eager):  # float32 rounding of the exact formula: a few ulps of |y| ≤ 4
        assert np.max(np.abs(np.asarray(result, np.float64) - truth)) < 4e-6
    np.testing.assert_allclose(new_state.moving_variance, eager_state.moving_variance, rtol=1e-6)

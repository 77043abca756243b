"""Under ``jax.jit`` a centred training step keeps no input-sized array but y.

TensorFlow's fused kernel and the PyTorch, ONNX and Flax (two-pass) conventions
subtract the batch mean from x for the statistics and again for y; XLA merges the
two subtractions and then writes the difference out and reads it back (its
reduction fusion takes it from memory), a whole pass more. ``optimization_barrier``
on y's mean keeps them apart. The structural tests read XLA:CPU's optimized
program, where an input-sized array is a pass over memory: they hold for the XLA
this project pins (``jax`` in the nox sessions), and a newer XLA that fuses
otherwise makes them fail, which is the signal to look again. The Keras and Flax
one-pass conventions, which never subtract twice, are the controls.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import bn_portable as bn
import bn_portable._conventions._common as conventions_common
import bn_portable._kernels._normalize as normalize_kernels
from bn_portable import conventions
from bn_portable._lib._backends import optimization_barrier

jax = pytest.importorskip("jax", reason="the JAX tests need JAX, which is not installed")
jnp = jax.numpy

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the counts are XLA:CPU's fusion decisions"
)

SHAPE = (8, 16, 16, 32)  # NHWC
OPTIONS = {"decay": 0.99, "epsilon": 1e-5, "scale": True, "data_format": "NHWC", "fused": True}
#: An instruction of the optimized program: its name, result type (an array or a tuple) and opcode.
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%\S+ = (?P<type>\([^=]*?\)|\S+) (?P<opcode>[\w-]+)\(")
#: Opcodes that make no array of their own.
NO_ARRAY = {"parameter", "tuple", "get-tuple-element", "bitcast"}


def _inputs() -> tuple[object, bn.BatchNormState]:
    # float32 throughout, also where another test turned on jax_enable_x64
    x = jax.random.normal(jax.random.key(0), SHAPE, jnp.float32) * 1.5 + 0.5
    zeros, ones = _vectors()
    state = bn.BatchNormState(moving_mean=zeros, moving_variance=ones, gamma=ones, beta=zeros)
    return x, state


def _vectors() -> tuple[object, object]:
    return jnp.zeros(SHAPE[-1], jnp.float32), jnp.ones(SHAPE[-1], jnp.float32)


def _input_sized_arrays(step, x, *arguments) -> list[str]:
    """The optimized program's top-level instructions that make an array of x's shape
    (one per such array in a multi-output fusion's result)."""
    text = jax.jit(step).lower(x, *arguments).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    shape = "f32[" + ",".join(map(str, x.shape)) + "]"
    assert x.dtype == jnp.float32
    made = []
    for line in entry.splitlines()[1:]:
        found = INSTRUCTION.match(line)
        if found and found["opcode"] not in NO_ARRAY:
            made += [line.strip()] * found["type"].count(shape)
    return made


def _fused_step(replicas: bool):
    options = dict(OPTIONS, cross_replica_sum=(lambda total: total) if replicas else None)
    return lambda x, state: bn.batch_norm(x, state, **options)


#: Each convention's training step on x in its layout (channels first for PyTorch and ONNX).
CONVENTIONS = {
    "flax two-pass": lambda x, z, o: conventions.flax_batch_norm(x, z, o, o, z, use_fast_variance=False),
    "flax": lambda x, z, o: conventions.flax_batch_norm(x, z, o, o, z),
    "keras": lambda x, z, o: conventions.keras_batch_norm(x, z, o, o, z, training=True),
    "pytorch": lambda x, z, o: conventions.pytorch_batch_norm(x, z, o, o, z, training=True),
    "onnx": lambda x, z, o: conventions.onnx_batch_norm(x, o, z, z, o, training_mode=True),
}


def _convention_inputs(name: str) -> tuple[object, object, object]:
    x, _ = _inputs()
    if name in ("pytorch", "onnx"):
        x = jnp.moveaxis(x, -1, 1)
    return (x, *_vectors())


@pytest.mark.parametrize("replicas", [False, True], ids=["one batch", "cross-replica statistics"])
def test_the_fused_training_step_makes_y_only(replicas: bool) -> None:
    x, state = _inputs()
    step = _fused_step(replicas)
    assert "optimization_barrier" in str(jax.make_jaxpr(step)(x, state))
    made = _input_sized_arrays(step, x, state)
    assert len(made) == 1, made  # y, and no x − mean kept in memory


@pytest.mark.parametrize("name", CONVENTIONS)
def test_every_convention_s_training_step_makes_y_only(name: str) -> None:
    made = _input_sized_arrays(CONVENTIONS[name], *_convention_inputs(name))
    assert len(made) == 1, made


def test_the_barrier_keeps_every_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same formula with and without the barrier: equal to rounding (XLA may add the
    squares in another order once y's subtraction is apart; at 32×56×56×64 one channel's
    variance came out 1 ulp apart, here every bit agrees)."""
    x, state = _inputs()
    programs = {"fused": (lambda: _fused_step(False), (x, state))}
    programs |= {name: (lambda name=name: CONVENTIONS[name], _convention_inputs(name)) for name in CONVENTIONS}
    with_barrier = {name: jax.jit(step())(*arguments) for name, (step, arguments) in programs.items()}
    for module in (normalize_kernels, conventions_common):
        monkeypatch.setattr(module, "optimization_barrier", lambda array, xp: array)
    for name, (step, arguments) in programs.items():
        without = jax.jit(step())(*arguments)  # a new function: traced afresh, without the barrier
        for a, b in zip(jax.tree.leaves(with_barrier[name]), jax.tree.leaves(without)):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            ulp = np.spacing(np.float32(np.max(np.abs(b))))
            np.testing.assert_allclose(a, b, rtol=0, atol=4 * ulp, err_msg=name)


def test_eager_arrays_pass_unchanged() -> None:
    x, _ = _inputs()
    values = np.asarray(x)
    assert optimization_barrier(values, bn._lib._compat.array_namespace(values)) is values
    assert optimization_barrier(x, bn._lib._compat.array_namespace(x)) is x

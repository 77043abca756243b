"""Keras 3's ``keras.layers.BatchNormalization`` against
``bn_portable.conventions.keras_batch_norm``.

Each case runs one layer (JAX backend, CPU) through a train, train, inference
sequence, with its variables updated by the layer: ranks 2 to 4 with ``axis=-1`` and
``axis=1``; float32, float64 (``float64`` policy: computed in float32 by Keras, its
outputs are stored as the float32 values they are), float16 and bfloat16 under the
``mixed_*`` policies (float32 variables) and float16 under the plain ``float16``
policy (float16 variables); masks with uneven and all-False rows, and an all-False
mask; ``center``/``scale`` off; other momentum and epsilon; a mean 10³ times the
spread. Arrays: ``init/{gamma, beta, moving_mean, moving_variance}``,
``step<k>/x``, ``step<k>/mask``; outputs ``step<k>/y`` and
``step<k>/state/{moving_mean, moving_variance}``. Keras 3 synchronizes statistics
only on its TensorFlow backend, so replicas are unit-tested against the whole batch
(``tests/test_conventions_keras_flax.py``). Generated with
``KERAS_BACKEND=jax python -m conformance.conventions.generate keras``.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import numpy as np

OP = "conventions/keras"
GROUP = "convention:keras"
CHANNELS = 3
STEPS = ["train", "train", "infer"]
#: layout name -> (shape, axis)
LAYOUTS = {
    "NC": ((24, CHANNELS), -1),
    "CN": ((CHANNELS, 20), 0),
    "NTC": ((6, 5, CHANNELS), -1),
    "NCT": ((6, CHANNELS, 5), 1),
    "NHWC": ((4, 5, 3, CHANNELS), -1),
    "NCHW": ((4, CHANNELS, 5, 3), 1),
}
#: policy -> (x's dtype, the variables' dtype)
POLICIES = {
    "float32": ("float32", "float32"),
    "float64": ("float64", "float64"),
    "mixed_float16": ("float16", "float32"),
    "mixed_bfloat16": ("bfloat16", "float32"),
    "float16": ("float16", "float16"),
}


def _case(layout: str, policy: str = "float32", variant: str = "plain", *, mask: str | None = None,
          center: bool = True, scale: bool = True, momentum: float = 0.99, epsilon: float = 1e-3,
          loc: float = 0.5, spread: float = 2.0) -> dict[str, Any]:
    shape, axis = LAYOUTS[layout]
    dtype, variable_dtype = POLICIES[policy]
    kwargs: dict[str, Any] = {"momentum": momentum, "epsilon": epsilon, "axis": axis}
    return {
        "id": f"keras/train/{layout}/{policy}/{variant}", "op": OP, "group": GROUP,
        "dtype": dtype, "variable_dtype": variable_dtype, "policy": policy,
        "channel_axis": axis, "kwargs": kwargs, "steps": STEPS, "shape": list(shape),
        "mask": mask, "center": center, "scale": scale, "loc": loc, "spread": spread,
    }


def _cases() -> list[dict[str, Any]]:
    cases = []
    for layout in LAYOUTS:
        for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
            cases.append(_case(layout, policy))
            cases.append(_case(layout, policy, "mask", mask="rows"))
    for layout in ("NC", "NHWC", "NCHW"):
        cases.append(_case(layout, "float64"))
        cases.append(_case(layout, "float64", "mask", mask="rows"))
        cases.append(_case(layout, "float16"))
    cases.append(_case("NTC", "float16", "mask", mask="rows"))
    for layout in ("NHWC", "NCT"):
        cases.append(_case(layout, variant="mask-all-false", mask="none"))
        cases.append(_case(layout, variant="no-center", center=False))
        cases.append(_case(layout, variant="no-scale", scale=False))
        cases.append(_case(layout, variant="neither", center=False, scale=False, mask="rows"))
        cases.append(_case(layout, variant="momentum=0.9,epsilon=1e-5", momentum=0.9, epsilon=1e-5))
    for layout, policy in (("NHWC", "float32"), ("NC", "float32"), ("NCHW", "float64")):
        cases.append(_case(layout, policy, "large-mean", loc=1.0e3, spread=1.0))
        cases.append(_case(layout, policy, "large-mean-mask", mask="rows", loc=1.0e3, spread=1.0))
    return cases


CASES = _cases()


def versions() -> dict[str, str]:
    import jax
    import keras

    return {"keras": keras.__version__, "jax": jax.__version__, "numpy": np.__version__,
            "keras_backend": keras.backend.backend()}


def _data(case: dict[str, Any]) -> dict[str, np.ndarray]:
    """The case's inputs as float64/bool NumPy arrays (rounded to the dtypes later)."""
    rng = np.random.default_rng(zlib.crc32(case["id"].encode()))
    shape = tuple(case["shape"])
    data: dict[str, np.ndarray] = {
        "init/gamma": rng.uniform(0.5, 1.5, CHANNELS),
        "init/beta": rng.uniform(-0.5, 0.5, CHANNELS),
        "init/moving_mean": rng.uniform(-0.2, 0.2, CHANNELS) + case["loc"],
        "init/moving_variance": rng.uniform(0.5, 2.0, CHANNELS),
    }
    for k, _ in enumerate(case["steps"]):
        offsets = np.linspace(-1.0, 1.0, CHANNELS).reshape(_channel_shape(case))
        data[f"step{k}/x"] = rng.standard_normal(shape) * case["spread"] + case["loc"] + offsets
        if case["mask"] == "rows":
            mask = rng.uniform(size=shape[:-1]) < 0.6
            mask[0, ...] = False  # one all-False row
            if len(shape) > 2:
                mask[1, ...] = True
            data[f"step{k}/mask"] = mask
        elif case["mask"] == "none":
            data[f"step{k}/mask"] = np.zeros(shape[:-1], bool)
    return data


def _channel_shape(case: dict[str, Any]) -> tuple[int, ...]:
    shape = [1] * len(case["shape"])
    shape[case["kwargs"]["axis"]] = CHANNELS
    return tuple(shape)


def generate(case: dict[str, Any]) -> dict[str, np.ndarray]:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax

    # The float64 policy needs JAX's float64 (set before Keras reads it); float32 arrays
    # and weak Python floats stay as they are.
    jax.config.update("jax_enable_x64", True)
    import keras
    from keras import layers

    if keras.backend.backend() != "jax":
        raise RuntimeError("generate the Keras goldens with KERAS_BACKEND=jax")
    data = _data(case)
    kwargs = case["kwargs"]
    layer = layers.BatchNormalization(
        axis=kwargs["axis"], momentum=kwargs["momentum"], epsilon=kwargs["epsilon"],
        center=case["center"], scale=case["scale"], dtype=case["policy"],
    )
    layer.build(tuple(case["shape"]))
    variable_dtype = case["variable_dtype"]
    out: dict[str, np.ndarray] = {}
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        variable = getattr(layer, name)
        if variable is None:
            continue
        value = np.asarray(keras.ops.convert_to_numpy(
            keras.ops.cast(data[f"init/{name}"], variable_dtype)))
        variable.assign(value)
        out[f"init/{name}"] = value
    for k, step in enumerate(case["steps"]):
        x = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(data[f"step{k}/x"], case["dtype"])))
        mask = data.get(f"step{k}/mask")
        y = layer(x, training=step == "train", mask=mask)
        out[f"step{k}/x"] = x
        if mask is not None:
            out[f"step{k}/mask"] = mask
        out[f"step{k}/y"] = _float32_digits(keras.ops.convert_to_numpy(y))
        for name in ("moving_mean", "moving_variance"):
            out[f"step{k}/state/{name}"] = _float32_digits(
                keras.ops.convert_to_numpy(getattr(layer, name).value))
    return out


def _float32_digits(array: Any) -> np.ndarray:
    """A float64 output as float32, which holds it exactly: Keras computes in float32 whatever
    the policy (``result_type(float64, float32)`` is float32 in its lattice), so the float64
    policy's outputs carry float32's digits, and are compared with float32's tolerance."""
    array = np.asarray(array)
    if array.dtype != np.float64:
        return array
    narrow = array.astype(np.float32)
    if not np.array_equal(narrow.astype(np.float64), array, equal_nan=True):
        raise AssertionError("a float64 output of Keras is not a float32 value")
    return narrow


def run(case: dict[str, Any], inputs: Any, backend: Any) -> dict[str, np.ndarray]:
    from bn_portable.conventions import keras_batch_norm

    kwargs = case["kwargs"]
    static = json.dumps([OP, kwargs], sort_keys=True)
    gamma, beta = inputs.optional("init/gamma"), inputs.optional("init/beta")
    mean, variance = inputs("init/moving_mean"), inputs("init/moving_variance")
    produced: dict[str, Any] = {}
    for k, step in enumerate(case["steps"]):
        y, mean, variance = backend.call(
            lambda x, m, v, g, b, mask, training=step == "train": keras_batch_norm(
                x, m, v, g, b, training, mask=mask, **kwargs
            ),
            inputs(f"step{k}/x"), mean, variance, gamma, beta, inputs.optional(f"step{k}/mask"),
            static=static,
        )
        produced[f"step{k}/y"] = y
        produced[f"step{k}/state/moving_mean"] = mean
        produced[f"step{k}/state/moving_variance"] = variance
    return {name: backend.to_numpy(value) for name, value in produced.items()}

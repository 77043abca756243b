"""Replaying TensorFlow's recorded batch-norm layers (tests/data/porting) on a backend."""

from __future__ import annotations

from typing import Any

import numpy as np
from conformance.compare import error_in_epsilons, tolerance

import bn_portable as bn

TOLERANCE = tolerance("float32", "y", None)


def arrays(path: Any) -> dict[str, np.ndarray]:
    with np.load(path) as file:
        return {key: file[key] for key in file.files}


def section(recorded: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """``{name: array}`` of the keys ``<prefix>|<name>``."""
    return {k.split("|", 1)[1]: v for k, v in recorded.items() if k.startswith(prefix + "|")}


def worst_error(results: dict[str, tuple[Any, np.ndarray, np.ndarray | None]], channel_axis: int) -> dict[str, float]:
    """Errors in float32 epsilons of ``{name: (actual, expected, source x or None)}``."""
    return {
        name: error_in_epsilons(np.asarray(actual), expected, "float32", source=x, channel_axis=channel_axis)
        for name, (actual, expected, x) in results.items()
    }


def assert_matches_tensorflow(backend, state, options, x, expected_infer, expected_train, after) -> None:
    """Inference, one training step and its variables, on ``backend``, against TensorFlow."""
    channel_axis = 1 if options.get("data_format", "NHWC") == "NCHW" else x.ndim - 1
    on_backend = state._replace(
        **{f: backend.asarray(getattr(state, f), "float32") for f in state._fields if getattr(state, f) is not None}
    )
    xb = backend.asarray(x, "float32")
    y_infer, _ = backend.call(lambda x_, s_: bn.batch_norm(x_, s_, is_training=False, **options), xb, on_backend)
    y_train, new = backend.call(lambda x_, s_: bn.batch_norm(x_, s_, **options), xb, on_backend)
    results = {"infer": (backend.to_numpy(y_infer), expected_infer, x), "train": (backend.to_numpy(y_train), expected_train, x)}
    for field in state._fields:
        if getattr(state, field) is not None:
            results[field] = (backend.to_numpy(getattr(new, field)), getattr(after, field), None)
    for name, error in worst_error(results, channel_axis).items():
        assert error <= TOLERANCE, f"{name}: {error:.1f} float32 epsilons from TensorFlow"

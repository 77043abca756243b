"""ONNX's ``BatchNormalization`` (opset 15), as ONNX Runtime's CPU provider runs it, against
``bn_portable.conventions.onnx_batch_norm``.

Each step is one single-node model built with ``onnx.helper`` (``training_mode`` 1
with the three outputs, or 0 with ``Y`` only) run by an ``InferenceSession`` with one
thread; a training step's ``running_mean``/``running_var`` feed the next step's
``input_mean``/``input_var``. ONNX Runtime 1.32 runs ``training_mode=1`` on CPU. Its
CPU kernel has float32 and float64 only (a float16 node runs in float32 behind
inserted casts; bfloat16 and float32-with-float64 mixes have no kernel), so the
cases cover float32, float64, float16 and float16 x with float32 parameters.
Arrays: ``init/scale``, ``init/b``, ``init/input_mean``, ``init/input_var``,
``step<k>/x``; outputs ``step<k>/y`` and, for training steps,
``step<k>/state/{running_mean, running_var}``. Generated with
``python -m conformance.conventions.generate onnx`` (onnx, onnxruntime, numpy).
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any

import numpy as np

OP = "conventions/onnx"
GROUP = "convention:onnx"
OPSET = 15
CHANNELS = 3
SHAPES = {2: (16, CHANNELS), 3: (6, CHANNELS, 5), 4: (4, CHANNELS, 5, 6), 5: (3, CHANNELS, 4, 3, 5)}
STEPS = [True, True, False, True, False]


def _case(name: str, *, rank: int = 4, dtype: str = "float32", param_dtype: str | None = None,
          stat_dtype: str | None = None, momentum: float = 0.9, epsilon: float = 1e-5,
          steps: list[bool] | None = None, loc: float = 0.5, scale: float = 2.0,
          shape: tuple[int, ...] | None = None, **extra: Any) -> dict[str, Any]:
    param_dtype = param_dtype or dtype
    stat_dtype = stat_dtype or param_dtype
    mixed = "" if param_dtype == stat_dtype == dtype else f"+{param_dtype}+{stat_dtype}"
    return {
        "id": f"onnx/{name}/{rank}d/{dtype}{mixed}/momentum={momentum}",
        "op": OP, "group": GROUP, "dtype": dtype, "channel_axis": 1,
        "param_dtype": param_dtype, "stat_dtype": stat_dtype,
        "kwargs": {"epsilon": epsilon, "momentum": momentum},
        "steps": steps or STEPS, "shape": list(shape or SHAPES[rank]), "loc": loc, "scale": scale,
        **extra,
    }


def _cases() -> list[dict[str, Any]]:
    cases = []
    for rank in (2, 3, 4, 5):
        for dtype in ("float32", "float64"):
            cases.append(_case("train", rank=rank, dtype=dtype))
    for rank in (2, 4):
        cases.append(_case("train", rank=rank, dtype="float16"))
        cases.append(_case("train", rank=rank, dtype="float16", param_dtype="float32"))
    cases.append(_case("train", rank=3, dtype="float16", stat_dtype="float32"))
    cases.append(_case("train", rank=3, dtype="float16", param_dtype="float32", stat_dtype="float16"))
    for momentum in (0.0, 0.5, 0.99, 1.0):
        cases.append(_case("momentum", momentum=momentum))
    for epsilon in (1e-3, 0.1):
        cases.append(_case(f"epsilon={epsilon}", epsilon=epsilon))
    for rank, dtype in ((2, "float32"), (4, "float64"), (4, "float16")):
        cases.append(_case("inference", rank=rank, dtype=dtype, steps=[False, False]))
    for rank, dtype in ((4, "float32"), (2, "float32"), (4, "float64")):
        cases.append(_case("large-mean", rank=rank, dtype=dtype, loc=1.0e4, scale=1.0, truth="float64"))
    # One value per channel: the population variance is 0 (ONNX has no Bessel factor), and
    # ORT's folded x·a + (B − mean·a) with a = scale/sqrt(ε) is its own error: a truth.
    cases.append(_case("one-value", rank=2, shape=(1, CHANNELS), steps=[True, False], truth="float64"))
    return cases


CASES = _cases()


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "opset": str(OPSET)}


def _rng(case: dict[str, Any], name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{case['id']}|{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _inputs(case: dict[str, Any]) -> dict[str, np.ndarray]:
    pdt, sdt = case["param_dtype"], case["stat_dtype"]
    arrays = {
        "init/scale": _rng(case, "scale").uniform(0.5, 1.5, CHANNELS).astype(pdt),
        "init/b": _rng(case, "b").uniform(-0.5, 0.5, CHANNELS).astype(pdt),
        "init/input_mean": (case["loc"] + _rng(case, "mean").uniform(-1, 1, CHANNELS)).astype(sdt),
        "init/input_var": _rng(case, "var").uniform(0.5, 2.0, CHANNELS).astype(sdt),
    }
    for k in range(len(case["steps"])):
        x = case["loc"] + case["scale"] * _rng(case, f"step{k}/x").normal(size=case["shape"])
        arrays[f"step{k}/x"] = x.astype(case["dtype"])
    return arrays


def _session(case: dict[str, Any], training: bool, dtypes: tuple[str, str, str]) -> Any:
    import onnx
    import onnxruntime
    from onnx import helper

    shape = case["shape"]
    xt, pt, st = (onnx.helper.np_dtype_to_tensor_dtype(np.dtype(d)) for d in dtypes)
    inputs = [
        helper.make_tensor_value_info("X", xt, shape),
        helper.make_tensor_value_info("scale", pt, [CHANNELS]),
        helper.make_tensor_value_info("B", pt, [CHANNELS]),
        helper.make_tensor_value_info("input_mean", st, [CHANNELS]),
        helper.make_tensor_value_info("input_var", st, [CHANNELS]),
    ]
    names = ["Y", "running_mean", "running_var"] if training else ["Y"]
    outputs = [helper.make_tensor_value_info("Y", xt, shape)] + [
        helper.make_tensor_value_info(name, st, [CHANNELS]) for name in names[1:]
    ]
    node = helper.make_node(
        "BatchNormalization", ["X", "scale", "B", "input_mean", "input_var"], names,
        epsilon=case["kwargs"]["epsilon"], momentum=case["kwargs"]["momentum"],
        training_mode=int(training),
    )
    graph = helper.make_graph([node], "batch_norm", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _steps(case: dict[str, Any], arrays: dict[str, np.ndarray], wide: bool) -> dict[str, np.ndarray]:
    """Run the case's steps in ONNX Runtime (every array float64 when ``wide``)."""
    dtypes = ("float64",) * 3 if wide else (case["dtype"], case["param_dtype"], case["stat_dtype"])

    def cast(array: np.ndarray) -> np.ndarray:
        return array.astype(np.float64) if wide else array

    feeds = {"scale": cast(arrays["init/scale"]), "B": cast(arrays["init/b"]),
             "input_mean": cast(arrays["init/input_mean"]), "input_var": cast(arrays["init/input_var"])}
    sessions = {training: _session(case, training, dtypes) for training in set(case["steps"])}
    out: dict[str, np.ndarray] = {}
    for k, training in enumerate(case["steps"]):
        results = sessions[training].run(None, {**feeds, "X": cast(arrays[f"step{k}/x"])})
        out[f"step{k}/y"] = results[0]
        if training:
            feeds["input_mean"], feeds["input_var"] = results[1], results[2]
            out[f"step{k}/state/running_mean"] = results[1]
            out[f"step{k}/state/running_var"] = results[2]
    return out


def generate(case: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays = _inputs(case)
    arrays.update(_steps(case, arrays, wide=False))
    if case.get("truth") == "float64":
        truth = _steps(case, arrays, wide=True)
        arrays.update({f"truth/{name}": value for name, value in truth.items()})
    return arrays


def _static(case: dict[str, Any]) -> str:
    return json.dumps([OP, case["kwargs"]], sort_keys=True)


def run(case: dict[str, Any], inputs: Any, backend: Any) -> dict[str, np.ndarray]:
    """The case's steps through ``onnx_batch_norm`` on ``backend``."""
    from bn_portable.conventions import onnx_batch_norm

    kwargs = case["kwargs"]
    scale, b = inputs("init/scale"), inputs("init/b")
    mean, var = inputs("init/input_mean"), inputs("init/input_var")
    produced: dict[str, Any] = {}
    for k, training in enumerate(case["steps"]):
        y, mean, var = backend.call(
            lambda x, s, o, m, v, training=training: onnx_batch_norm(
                x, s, o, m, v, training_mode=training, **kwargs
            ),
            inputs(f"step{k}/x"), scale, b, mean, var, static=_static(case),
        )
        produced[f"step{k}/y"] = y
        produced[f"step{k}/state/running_mean"] = mean
        produced[f"step{k}/state/running_var"] = var
    return {
        name: backend.to_numpy(value) for name, value in produced.items() if name in inputs.arrays
    }

"""PyTorch's batch norm (``nn.BatchNorm1d/2d/3d``, ``F.batch_norm``) against
``bn_portable.conventions.pytorch_batch_norm``.

Each case runs several steps of one module on CPU, one thread, with its buffers
updated in place (train → eval sequences, ``momentum=None`` over three steps,
``track_running_stats=False``, no affine, ranks 2 to 5, float32/float64/float16/
bfloat16 with parameters of x's dtype or float32, a mean 10⁴ times the spread
with a float64 truth, one value per channel). Arrays: ``init/weight``,
``init/bias``, ``init/running_mean``, ``init/running_var``,
``init/num_batches_tracked`` (int64), ``step<k>/x``; outputs ``step<k>/y`` and
``step<k>/state/{running_mean, running_var, num_batches_tracked}``. The counter's
outputs are stored as float64 (exact for a count), so that the comparison,
which measures floating error, applies to them; ``run`` returns them alike.
Generated with ``python -m conformance.conventions.generate pytorch`` (torch,
numpy and ml_dtypes, for bfloat16 arrays).
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any

import numpy as np

OP = "conventions/pytorch"
GROUP = "convention:pytorch"
CHANNELS = 3
SHAPES = {2: (16, CHANNELS), 3: (6, CHANNELS, 5), 4: (4, CHANNELS, 5, 6), 5: (3, CHANNELS, 4, 3, 5)}
TRAIN_EVAL = [True, True, False, True, False]


def _case(name: str, *, rank: int = 4, dtype: str = "float32", param_dtype: str | None = None,
          momentum: float | None = 0.1, eps: float = 1e-5, steps: list[bool] | None = None,
          affine: bool = True, track: bool = True, counter: bool = True, loc: float = 0.5,
          scale: float = 2.0, shape: tuple[int, ...] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"pytorch/{name}/{rank}d/{dtype}" + (f"+{param_dtype}" if param_dtype else "")
        + f"/momentum={momentum}",
        "op": OP, "group": GROUP, "dtype": dtype, "channel_axis": 1,
        "param_dtype": param_dtype or dtype,
        "kwargs": {"momentum": momentum, "eps": eps},
        "steps": steps or TRAIN_EVAL, "affine": affine, "track": track, "counter": counter,
        "shape": list(shape or SHAPES[rank]), "loc": loc, "scale": scale, **extra,
    }


def _cases() -> list[dict[str, Any]]:
    cases = []
    for rank in (2, 3, 4, 5):
        for dtype in ("float32", "float64"):
            cases.append(_case("train", rank=rank, dtype=dtype))
    for rank in (2, 4):
        for dtype in ("float16", "bfloat16"):
            cases.append(_case("train", rank=rank, dtype=dtype))
            cases.append(_case("train", rank=rank, dtype=dtype, param_dtype="float32"))
    cumulative = [True, True, True, False]
    for rank, dtype in ((3, "float32"), (4, "float32"), (4, "float64"), (2, "float16")):
        cases.append(_case("cumulative", rank=rank, dtype=dtype, momentum=None, steps=cumulative))
    cases.append(_case("cumulative", rank=4, dtype="float16", param_dtype="float32",
                       momentum=None, steps=cumulative))
    for momentum in (0.0, 0.3, 1.0):
        cases.append(_case("momentum", momentum=momentum))
    for eps in (1e-3, 0.1):
        cases.append(_case(f"eps={eps}", eps=eps))
    for rank, dtype in ((2, "float32"), (4, "float32"), (4, "float16")):
        cases.append(_case("no-affine", rank=rank, dtype=dtype, affine=False))
    for rank, dtype in ((2, "float32"), (4, "float32"), (3, "float64")):
        cases.append(_case("untracked", rank=rank, dtype=dtype, track=False, steps=[True, False, True]))
    cases.append(_case("functional", rank=4, counter=False))  # F.batch_norm: no counter
    for rank, dtype in ((4, "float32"), (2, "float32"), (4, "float64")):
        cases.append(_case("large-mean", rank=rank, dtype=dtype, loc=1.0e4, scale=1.0, truth="float64"))
    cases.append(_case("eval-first", rank=4, steps=[False, True, False]))
    # One value per channel: PyTorch refuses batch statistics, evaluation is fine.
    cases.append(_case("one-value", rank=2, shape=(1, CHANNELS), steps=[True], expect_error=True))
    cases.append(_case("one-value", rank=3, shape=(1, CHANNELS, 1), steps=[True], expect_error=True))
    cases.append(_case("one-value-eval", rank=3, shape=(1, CHANNELS, 1), steps=[False]))
    cases.append(_case("two-values", rank=3, shape=(1, CHANNELS, 2), steps=[True, False]))
    return cases


CASES = _cases()
STATE = ("running_mean", "running_var")


def versions() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _rng(case: dict[str, Any], name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{case['id']}|{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _exact(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values rounded to ``dtype`` (bfloat16 by ml_dtypes)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return values.astype(ml_dtypes.bfloat16)
    return values.astype(dtype)


def _inputs(case: dict[str, Any]) -> dict[str, np.ndarray]:
    pdt = case["param_dtype"]
    arrays: dict[str, np.ndarray] = {}
    if case["affine"]:
        arrays["init/weight"] = _exact(_rng(case, "weight").uniform(0.5, 1.5, CHANNELS), pdt)
        arrays["init/bias"] = _exact(_rng(case, "bias").uniform(-0.5, 0.5, CHANNELS), pdt)
    if case["track"]:
        loc = case["loc"]
        arrays["init/running_mean"] = _exact(loc + _rng(case, "mean").uniform(-1, 1, CHANNELS), pdt)
        arrays["init/running_var"] = _exact(_rng(case, "var").uniform(0.5, 2.0, CHANNELS), pdt)
        if case["counter"]:
            arrays["init/num_batches_tracked"] = np.array(2 if case["kwargs"]["momentum"] else 0)
    for k in range(len(case["steps"])):
        rng = _rng(case, f"step{k}/x")
        x = case["loc"] + case["scale"] * rng.normal(size=case["shape"])
        arrays[f"step{k}/x"] = _exact(x, case["dtype"])
    return arrays


def _tensor(array: np.ndarray, dtype: Any = None) -> Any:
    import torch

    if str(array.dtype) == "bfloat16":
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    tensor = torch.from_numpy(np.array(array))
    return tensor if dtype is None else tensor.to(dtype)


def _numpy(tensor: Any, dtype: str) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        return _exact(tensor.detach().float().numpy().astype(np.float64), "bfloat16")
    return tensor.detach().numpy().copy()


def _module(case: dict[str, Any], arrays: dict[str, np.ndarray], wide: bool) -> Any:
    import torch

    rank = len(case["shape"])
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
           5: torch.nn.BatchNorm3d}[rank]
    kwargs = case["kwargs"]
    module = cls(CHANNELS, eps=kwargs["eps"], momentum=kwargs["momentum"], affine=case["affine"],
                 track_running_stats=case["track"])
    module = module.to(torch.float64 if wide else getattr(torch, case["param_dtype"]))
    with torch.no_grad():
        for name in ("weight", "bias", *STATE):
            if f"init/{name}" in arrays:
                getattr(module, name).copy_(_tensor(arrays[f"init/{name}"]))
        if "init/num_batches_tracked" in arrays:
            module.num_batches_tracked.copy_(_tensor(arrays["init/num_batches_tracked"]))
    return module


def _steps(case: dict[str, Any], arrays: dict[str, np.ndarray], wide: bool) -> dict[str, np.ndarray]:
    """Run the case's steps in PyTorch (in float64 throughout when ``wide``)."""
    import torch

    module = _module(case, arrays, wide)
    out: dict[str, np.ndarray] = {}
    for k, training in enumerate(case["steps"]):
        x = _tensor(arrays[f"step{k}/x"], torch.float64 if wide else None)
        module.train(training)
        with torch.no_grad():
            if case["counter"]:
                y = module(x)
            else:  # the functional form: F.batch_norm with the module's buffers, no counter
                y = torch.nn.functional.batch_norm(
                    x, module.running_mean, module.running_var, module.weight, module.bias,
                    training, case["kwargs"]["momentum"], case["kwargs"]["eps"],
                )
        out[f"step{k}/y"] = _numpy(y, case["dtype"])
        if case["track"]:
            for name in STATE:
                out[f"step{k}/state/{name}"] = _numpy(getattr(module, name), case["param_dtype"])
            if case["counter"]:
                count = module.num_batches_tracked.numpy().astype(np.float64)
                out[f"step{k}/state/num_batches_tracked"] = count
    return out


def generate(case: dict[str, Any]) -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    arrays = _inputs(case)
    if case.get("expect_error"):
        try:
            _steps(case, arrays, wide=False)
        except ValueError:
            return arrays
        raise AssertionError(f"{case['id']}: PyTorch did not raise")
    arrays.update(_steps(case, arrays, wide=False))
    if case.get("truth") == "float64":
        truth = _steps(case, arrays, wide=True)
        arrays.update({f"truth/{name}": value for name, value in truth.items()})
    return arrays


def _static(case: dict[str, Any]) -> str:
    return json.dumps([OP, case["kwargs"]], sort_keys=True)


def run(case: dict[str, Any], inputs: Any, backend: Any) -> dict[str, np.ndarray]:
    """The case's steps through ``pytorch_batch_norm`` on ``backend``."""
    from bn_portable.conventions import pytorch_batch_norm

    kwargs = case["kwargs"]
    mean, var = inputs.optional("init/running_mean"), inputs.optional("init/running_var")
    counter = inputs.optional("init/num_batches_tracked")
    weight, bias = inputs.optional("init/weight"), inputs.optional("init/bias")
    produced: dict[str, Any] = {}
    for k, training in enumerate(case["steps"]):
        y, mean, var, counter = backend.call(
            lambda x, m, v, w, b, n, training=training: pytorch_batch_norm(
                x, m, v, w, b, training, num_batches_tracked=n, **kwargs
            ),
            inputs(f"step{k}/x"), mean, var, weight, bias, counter, static=_static(case),
        )
        produced[f"step{k}/y"] = y
        produced[f"step{k}/state/running_mean"] = mean
        produced[f"step{k}/state/running_var"] = var
        produced[f"step{k}/state/num_batches_tracked"] = counter
    result = {}
    for name, value in produced.items():
        if value is None or name not in inputs.arrays:
            continue
        array = backend.to_numpy(value)
        result[name] = array.astype(np.float64) if name.endswith("num_batches_tracked") else array
    return result

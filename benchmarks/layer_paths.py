"""Every path of ``batch_norm`` users take, timed against PyTorch's native kernel.

Usage::

    python benchmarks/layer_paths.py [--quick | --tiny] [--out FILE]

``batch_norm`` runs one of TensorFlow's implementations per call (docs/architecture.md):
the fused kernel (``fused=True``), the Keras layer without it (the default,
``fused=False``; ``renorm=True`` too) and tf-slim's composite (``batch_weights``,
``zero_debias_moving_mean=True``). Each case is one backend, shape, layout, dtype
and mode; its variants run interleaved in the same rounds (``_timing``), in three
passes over every case (a ratio is the median of its passes'), against
``torch.nn.functional.batch_norm`` on the same data in the same memory layout
(channels-last for NHWC) and dtype. Modes: ``train`` and ``infer`` forwards of
``batch_norm``, ``step`` (forward and backward with autograd, torch, float32).

``step`` runs ``bn_portable.torch.BatchNorm`` (``from_state``), as PyTorch users
train. ``floor …`` rows are the path's formula in the fewest whole-array
operations of the backend's library (PyTorch or NumPy) within the accuracy
contract (``_floors``, which says which): what the formula costs in that
library's operations, the moving averages included in training. At the small
shapes, ``floor … + checks`` adds the least any checked call reads first (the
layer call's arrays' metadata as one dict key, ``_floors.checked``). A ``step`` floor
is a training step as the native one runs, with those operations as the batch
norm (``_models.FloorBatchNorm``: PyTorch's own backward kernel behind a minimal
autograd node, as the end-to-end floors), differentiated by ``autograd.grad``:
a batch norm written in Python pays for a Python autograd node (a composite of
differentiable operations, which autograd records one by one, was no quicker at
the small sizes here).

NumPy cases record each path's peak memory over the input's bytes (output
included). ``--tiny`` runs everything on tiny sizes in two passes of one round (the test
suite runs it). Any ratio more than 25 % above the previous saved run's is
listed under ``regressions``.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import _floors
import bn_portable as bn
from _models import FloorBatchNorm
from _runs import INFERENCE_PATHS, TRAINING_PATHS
from _timing import Case, load_average, machine_info, peak_extra_memory, save_run, time_in_passes
from bn_portable.torch import BatchNorm

HERE = Path(__file__).resolve().parent
EPSILON = 1e-3
#: 1 − decay for the floors' moving averages (the native kernel's momentum).
DECAY_WEIGHT = 0.001
#: The layer's paths: ``batch_norm`` keywords (``weighted`` adds batch_weights).
PATHS: dict[str, dict[str, Any]] = {
    "fused": {"fused": True},
    "non-fused": {"fused": False},
    "renorm": {"fused": False, "renorm": True},
    "weighted": {"fused": False, "weighted": True},
    "zero-debias": {"fused": False, "zero_debias_moving_mean": True},
}
STEP_PATHS = ("fused", "non-fused")
#: The paths each mode times (``PATHS`` in training).
MODE_PATHS = {"train": TRAINING_PATHS, "infer": INFERENCE_PATHS, "step": STEP_PATHS}
#: name → NCHW shape (rank 2: an MLP batch, N×C).
SHAPES = {
    "full": {"32x64x56x56": (32, 64, 56, 56), "8x32x16x16": (8, 32, 16, 16), "256x512": (256, 512), "64x64": (64, 64)},
    "tiny": {"2x8x4x4": (2, 8, 4, 4), "8x16": (8, 16)},
}
TORCH_DTYPES = ("float32", "float16", "bfloat16")
NUMPY_DTYPES = ("float32", "float16")


class Data:
    """One input and the layer state every variant of a case shares."""

    def __init__(self, shape: tuple[int, ...], layout: str, dtype: str) -> None:
        rng = np.random.default_rng(0)
        channels = shape[1]
        self.layout = layout if len(shape) > 2 else "NHWC"  # rank 2: channels last either way
        nchw = rng.normal(0.5, 1.5, size=shape).astype(np.float32)
        self.native = torch.from_numpy(nchw).to(getattr(torch, dtype))
        if layout == "NHWC" and len(shape) == 4:
            self.native = self.native.contiguous(memory_format=torch.channels_last)
        #: what bn_portable is given: NHWC as TensorFlow lays it out (a view of the native tensor)
        self.torch = self.native.permute(0, 2, 3, 1) if layout == "NHWC" and len(shape) == 4 else self.native
        self.numpy = np.ascontiguousarray(self.torch.float().numpy()).astype(dtype) if dtype != "bfloat16" else None
        self.vectors = {
            "gamma": rng.uniform(0.5, 1.5, channels).astype(np.float32),
            "beta": rng.normal(0.0, 1.0, channels).astype(np.float32),
            "moving_mean": rng.normal(0.0, 0.5, channels).astype(np.float32),
            "moving_variance": rng.uniform(0.5, 2.0, channels).astype(np.float32),
        }
        self.weights = rng.uniform(0.5, 1.5, shape[0]).astype(np.float32)


def _state(data: Data, path: str, backend: str) -> Any:
    """An initial state for ``path``, as a call without one would create, with the case's values."""
    x = data.torch if backend == "torch" else data.numpy
    options = _options(data, path)
    weights = _weights(data, path, backend)
    _, state = bn.batch_norm(x, None, batch_weights=weights, **options)
    as_array = torch.from_numpy if backend == "torch" else np.asarray
    dtype = state.moving_mean.dtype
    values = {k: as_array(v).to(dtype) if backend == "torch" else v.astype(dtype) for k, v in data.vectors.items()}
    return state._replace(**values)


def _options(data: Data, path: str) -> dict[str, Any]:
    options = {k: v for k, v in PATHS[path].items() if k != "weighted"}
    return {"scale": True, "epsilon": EPSILON, "data_format": data.layout, **options}


def _weights(data: Data, path: str, backend: str) -> Any:
    if not PATHS[path].get("weighted"):
        return None
    return torch.from_numpy(data.weights) if backend == "torch" else data.weights


def portable_call(data: Data, path: str, backend: str, mode: str) -> Callable[[], Any]:
    x = data.torch if backend == "torch" else data.numpy
    state, options, weights = _state(data, path, backend), _options(data, path), _weights(data, path, backend)
    if mode != "step":
        training = mode == "train"
        return lambda: bn.batch_norm(x, state, batch_weights=weights, is_training=training, **options)
    # A training step as PyTorch users run it: the module (its parameters, its buffers updated).
    module = BatchNorm.from_state(state, **options)
    x = x.detach().requires_grad_()
    dy = torch.ones_like(x)

    def step() -> Any:
        y = module(x, weights)
        return torch.autograd.grad(y, (x, module.gamma, module.beta), dy)

    return step


def native_call(data: Data, mode: str) -> Callable[[], Any]:
    x = data.native
    v = {k: torch.from_numpy(a) for k, a in data.vectors.items()}
    if x.dtype != torch.float32:  # PyTorch's CPU kernel takes half input with float32 parameters
        v = {k: a.to(torch.float32) for k, a in v.items()}
    training = mode != "infer"
    if mode != "step":
        return lambda: F.batch_norm(
            x, v["moving_mean"].clone(), v["moving_variance"].clone(), v["gamma"], v["beta"], training, DECAY_WEIGHT, EPSILON
        )
    x = x.detach().requires_grad_()
    gamma, beta = v["gamma"].requires_grad_(), v["beta"].requires_grad_()
    dy = torch.ones_like(x)

    def step() -> Any:
        y = F.batch_norm(x, v["moving_mean"].clone(), v["moving_variance"].clone(), gamma, beta, True, DECAY_WEIGHT, EPSILON)
        return torch.autograd.grad(y, (x, gamma, beta), dy)

    return step


def floor_calls(data: Data, mode: str, backend: str, checks: bool = False) -> dict[str, Callable[[], Any]]:
    """The fewest operations of the backend's library within the accuracy contract (``_floors``);
    with ``checks``, each also after the cheapest checks a public call can make (``_floors.checked``)."""
    floors = _step_floors(data) if mode == "step" else _forward_floors(data, mode, backend)
    if checks:  # the layer call's arrays: x, no batch weights, no mask, the state
        x = data.torch if backend == "torch" else data.numpy
        arrays = (x, None, None, *_state(data, "fused", backend))
        floors |= {f"{name} + checks": _floors.checked(call, arrays) for name, call in floors.items()}
    return floors


def _forward_floors(data: Data, mode: str, backend: str) -> dict[str, Callable[[], Any]]:
    """A forward call's floors: the formula on the call's arrays, the statistics moved in training."""
    x = data.torch if backend == "torch" else data.numpy
    channel = 1 if data.layout == "NCHW" else x.ndim - 1
    v = {k: torch.from_numpy(a) if backend == "torch" else a for k, a in data.vectors.items()}

    count = math.prod(x.shape) // x.shape[channel]

    def operands(path: str) -> tuple[Any, ...]:
        """The statistics (moved into the moving ones in training) and the parameters, each
        shaped to broadcast against x within the call (``_floors.per_channel``)."""
        if mode == "infer":
            mean, variance = v["moving_mean"], v["moving_variance"]
        else:
            mean, variance = _floors.batch_statistics(x, channel)
            # The native kernel updates its running statistics in the same call.
            _floors.moving_average(v["moving_mean"], mean, DECAY_WEIGHT)
            target = _floors.variance_target(variance, count, path)
            _floors.moving_average(v["moving_variance"], target, DECAY_WEIGHT)
        return tuple(_floors.per_channel(t, x, channel) for t in (mean, variance, v["gamma"], v["beta"]))

    def floor(path: str, formula: Callable[..., Any]) -> Callable[[], Any]:
        return lambda: formula(x, *operands(path), EPSILON)

    return {f"floor {name}": floor(name, formula) for name, formula in _floors.FORMULAS.items()}


def _step_floors(data: Data) -> dict[str, Callable[[], Any]]:
    """A training step as the native one runs: the formula as a model's batch norm
    (``_models.FloorBatchNorm``: the moving averages in place, PyTorch's backward kernel
    behind a minimal autograd node), differentiated by autograd."""
    native = data.native.detach().requires_grad_()
    dy = torch.ones_like(native)
    reference = (torch.nn.BatchNorm2d if native.ndim == 4 else torch.nn.BatchNorm1d)(
        native.shape[1], eps=EPSILON, momentum=DECAY_WEIGHT
    )
    names = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    with torch.no_grad():
        for name, vector in names.items():
            getattr(reference, name).copy_(torch.from_numpy(data.vectors[vector]))

    def step_of(path: str) -> Callable[[], Any]:
        module = FloorBatchNorm(reference, path)

        def step() -> Any:
            return torch.autograd.grad(module(native), (native, module.weight, module.bias), dy)

        return step

    return {f"floor {path}": step_of(path) for path in _floors.FORMULAS}


def case_list(size: str) -> list[tuple[str, str, str, str, str]]:
    """``(backend, shape name, layout, dtype, mode)``: the large shape every way, the small ones float32."""
    shapes = list(SHAPES[size])
    large, small = shapes[0], shapes[1:]
    cases = []
    for backend, dtypes in (("torch", TORCH_DTYPES), ("numpy", NUMPY_DTYPES)):
        for dtype in dtypes:
            for layout in ("NCHW", "NHWC"):
                for mode in ("train", "infer"):
                    cases.append((backend, large, layout, dtype, mode))
    cases += [("torch", large, layout, "float32", "step") for layout in ("NCHW", "NHWC")]
    for name in small:
        layout = "NCHW" if len(SHAPES[size][name]) > 2 else "NHWC"
        cases += [("torch", name, layout, "float32", mode) for mode in ("train", "infer", "step")]
    return cases


def case_calls(size: str, backend: str, shape: str, layout: str, dtype: str, mode: str) -> dict[str, Callable[[], Any]]:
    """The variants of one case: the native call, each path, and the floors."""
    data = Data(SHAPES[size][shape], layout, dtype)
    calls: dict[str, Callable[[], Any]] = {"native": native_call(data, mode)}
    calls |= {path: portable_call(data, path, backend, mode) for path in MODE_PATHS[mode]}
    # Small batches, where a call's microseconds count: the floors with the checks' least too.
    calls |= floor_calls(data, mode, backend, checks=shape != next(iter(SHAPES[size])))
    return calls


def case_record(
    size: str, backend: str, shape: str, layout: str, dtype: str, mode: str, results: dict[str, Any]
) -> dict[str, Any]:
    """One case's saved record: its timings, and for NumPy each path's peak memory."""
    record = {
        "key": f"{backend}/{shape}/{layout}/{dtype}/{mode}", "backend": backend, "shape": shape,
        "layout": layout, "dtype": dtype, "mode": mode, "reference": "native", "results": results,
    }
    if backend == "numpy" and mode != "step":
        calls = case_calls(size, backend, shape, layout, dtype, mode)
        input_bytes = math.prod(SHAPES[size][shape]) * np.dtype(dtype).itemsize
        for path in MODE_PATHS[mode]:  # warm, as the timed calls were: a first call fills caches
            calls[path]()
        record["peak_memory_vs_input"] = {
            path: peak_extra_memory(calls[path], input_bytes) for path in MODE_PATHS[mode]
        }
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "layer_paths.json")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, two passes of one round: the harness works")
    parser.add_argument("--passes", type=int, default=None, help="passes over every case (default 3)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case and pass (default 7)")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "full"
    passes = args.passes or (2 if args.tiny else 1 if args.quick else 3)
    rounds = args.rounds or (1 if args.tiny else 5 if args.quick else 7)
    rng = random.Random(0)
    info = machine_info(torch)
    specs = {"/".join(spec): spec for spec in case_list(size)}
    cases: list[Case] = [
        (key, "native", functools.partial(case_calls, size, *spec)) for key, spec in specs.items()
    ]
    results = time_in_passes(cases, passes, rounds, 2, rng, progress=lambda key: print(key, file=sys.stderr, flush=True))
    payload = {
        "schema": 1, "size": size, "passes": passes, "rounds": rounds, "epsilon": EPSILON,
        "machine": {**info, "load_average_end": load_average()},
        "cases": [case_record(size, *specs[key], results[key]) for key in specs],
    }
    save_run(args.out, payload, compare=not args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

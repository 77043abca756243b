"""GPU timings: bn_portable on PyTorch-CUDA (and CuPy) against PyTorch's native CUDA kernel.

Usage (``nox -s gpu`` runs it on a machine with a CUDA device)::

    python benchmarks/bench_gpu.py [--out benchmarks/results/gpu.json] [--markdown docs/performance-gpu.md]

Each case times every implementation interleaved, round by round; a round is
``--inner`` back-to-back calls between two synchronizations, so launch and
Python overhead count as a training loop sees them. The figure is the median
per-call time over the rounds, and ratios are to ``torch native`` from the
same rounds. ``step`` is the layer's forward and backward with autograd.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EPSILON = 1e-3

#: (name, shape, data_format); rank 2 is an MLP batch.
SHAPES = [
    ("64x64", (64, 64), "NHWC"),
    ("256x512", (256, 512), "NHWC"),
    ("8x32x16x16", (8, 32, 16, 16), "NCHW"),
    ("32x64x56x56", (32, 64, 56, 56), "NCHW"),
    ("32x64x56x56", (32, 56, 56, 64), "NHWC"),
]
OPERATIONS = ("train", "infer", "step")


def _implementations(torch: Any, bn: Any, cupy: Any, shape, fmt, operation) -> dict[str, Callable]:
    channel = 1 if fmt == "NCHW" and len(shape) > 2 else len(shape) - 1
    channels = shape[channel]
    x = torch.randn(shape, device="cuda")
    dy = torch.randn_like(x)
    native_x = x if channel == 1 else x.movedim(-1, 1)
    native_dy = dy if channel == 1 else dy.movedim(-1, 1)
    gamma = torch.ones(channels, device="cuda", requires_grad=operation == "step")
    beta = torch.zeros(channels, device="cuda", requires_grad=operation == "step")
    mean, variance = torch.zeros(channels, device="cuda"), torch.ones(channels, device="cuda")
    _, state = bn.batch_norm(x, None, fused=True, scale=True, data_format=fmt)
    state = state._replace(gamma=gamma, beta=beta)
    functional = torch.nn.functional.batch_norm
    training = operation != "infer"
    impls: dict[str, Callable] = {}
    if operation == "step":
        xg, native_xg = x.clone().requires_grad_(), native_x.detach().clone().requires_grad_()

        def portable():
            y, _ = bn.batch_norm(xg, state, fused=True, scale=True, data_format=fmt)
            y.backward(dy)

        def native():
            y = functional(native_xg, mean, variance, gamma, beta, True, 0.001, EPSILON)
            y.backward(native_dy)

        impls["torch fast"], impls["torch native"] = portable, native
        return impls
    impls["torch fast"] = lambda: bn.batch_norm(
        x, state, fused=True, scale=True, data_format=fmt, is_training=training
    )
    impls["torch native"] = lambda: functional(
        native_x, mean, variance, gamma, beta, training, 0.001, EPSILON
    )
    if cupy is not None:
        cx = cupy.asarray(x.cpu().numpy())
        _, cstate = bn.batch_norm(cx, None, fused=True, scale=True, data_format=fmt)
        impls["cupy"] = lambda: bn.batch_norm(
            cx, cstate, fused=True, scale=True, data_format=fmt, is_training=training
        )
    return impls


def _time(torch, impls, rounds, inner, rng):
    samples: dict[str, list[float]] = {name: [] for name in impls}
    for call in impls.values():
        for _ in range(3):
            call()
    torch.cuda.synchronize()
    names = list(impls)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(inner):
                impls[name]()
            torch.cuda.synchronize()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--inner", type=int, default=20)
    args = parser.parse_args(argv)

    import torch

    import bn_portable as bn

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    try:
        import cupy
    except ImportError:
        cupy = None
    rng = random.Random(0)
    cases = []
    for name, shape, fmt in SHAPES:
        for operation in OPERATIONS:
            impls = _implementations(torch, bn, cupy, shape, fmt, operation)
            medians = _time(torch, impls, args.rounds, args.inner, rng)
            reference = medians["torch native"]
            cases.append(
                {
                    "operation": operation,
                    "shape_name": name,
                    "layout": fmt,
                    "dtype": "float32",
                    "median_ms": medians,
                    "ratio_vs_torch_native": {k: v / reference for k, v in medians.items()},
                }
            )
            print(operation, name, fmt, {k: f"{v:.4f} ms" for k, v in medians.items()}, flush=True)
    payload = {
        "gpu": torch.cuda.get_device_name(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {n: _version(n) for n in ("torch", "cupy-cuda12x", "numpy")},
        "rounds": args.rounds,
        "calls_per_round": args.inner,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.markdown is not None:
        args.markdown.write_text(render(payload))
        print(f"wrote {args.markdown}")
    return 0


def render(payload: dict) -> str:
    names = sorted({k for case in payload["cases"] for k in case["median_ms"]} - {"torch native"})
    rows = [
        "# Performance on a GPU",
        "",
        f"{payload['gpu']}, {payload['date_utc']}; torch {payload['versions']['torch']}."
        " Generated by `benchmarks/bench_gpu.py` (`nox -s gpu`): median per-call time over"
        f" {payload['rounds']} interleaved rounds of {payload['calls_per_round']} calls"
        " between synchronizations, float32, `batch_norm(fused=True, scale=True)`;"
        " ratios to `torch.nn.functional.batch_norm` from the same rounds.",
        "",
        "| operation | shape | layout | torch native ms | " + " | ".join(names) + " |",
        "| " + " | ".join(["---"] * (4 + len(names))) + " |",
    ]
    for case in payload["cases"]:
        ratios = case["ratio_vs_torch_native"]
        cells = [f"{ratios[n]:.2f}×" if n in ratios else "—" for n in names]
        rows.append(
            f"| {case['operation']} | {case['shape_name']} | {case['layout']} | "
            f"{case['median_ms']['torch native']:.4f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows) + "\n"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a small call's time goes: the native kernel, bn_portable's fast-path kernel
called directly, and the public function, side by side in one process.

    python benchmarks/call_overhead.py [--out benchmarks/results/call_overhead.md]

For PyTorch (float32, 2 threads) and NumPy, at the MLP and small convolution
shapes of the performance page, training and inference forward
(``fused_batch_norm``) and the layer (``batch_norm(fused=True, scale=True)``,
no autograd). ``kernel`` is the fast-path module's function with the
arguments the public function would pass it (the generic kernel where the fast
path hands a small batch back); ``public − kernel`` is what
validation, planning, dispatch and the small constants around the kernel cost.
``floor`` is the path's formula in the fewest operations of the array's library
with nothing around them (no checks, no dispatch, no state; ``_floors``): the
statistics in two accurately summed passes, ``rsqrt(σ² + ε)``, its product with
γ and y centred first (no fold of μ into the offset), then scaled and shifted (one
fused multiply-add where PyTorch's channels are innermost in memory, a multiply
and an add elsewhere): ``floor / native`` is about the best a wrapper of the library's operations that
keeps the accuracy contract can reach. ``floor + checks`` adds what every checked
call reads before its arithmetic, the cheapest form the checks can take
(``_floors.checked``: the layer call's arrays' metadata as one key, looked up in a
dict); no public call comes in under it, so where it is above a target's limit, so
is every checked layer in Python.
Each figure is the quickest of 15 means over 200 calls, a row's calls taking turns.
"""

from __future__ import annotations

import argparse
import platform
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np
import torch
import torch.nn.functional as F

import _floors
import bn_portable as bn
from bn_portable._kernels import _normalize
from bn_portable._native import _numpy as numpy_kernels
from bn_portable._native import _torch as torch_kernels

EPSILON = 1e-3
#: (name, shape, data format): the MLP batches as the fused op's rank-4 twins.
SHAPES = [
    ("64x64", (64, 1, 1, 64), "NHWC"),
    ("256x512", (256, 1, 1, 512), "NHWC"),
    ("128x1024", (128, 1, 1, 1024), "NHWC"),
    ("8x32x16x16", (8, 32, 16, 16), "NCHW"),
]


def _us(calls: dict[str, Callable[[], Any]], number: int = 200, rounds: int = 15) -> dict[str, float]:
    """µs per call of each: the quickest of ``rounds`` means over ``number`` calls, the calls
    taking turns in every round (so that all of a row's columns see the same states of a
    shared machine, where other work only adds time)."""
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            best[name] = min(best[name], timeit.timeit(call, number=number))
    return {name: seconds / number * 1e6 for name, seconds in best.items()}


def measure() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name, shape, fmt in SHAPES:
        channels = shape[1 if fmt == "NCHW" else 3]
        x = rng.normal(size=shape).astype(np.float32)
        g, b = (rng.random(channels) + 0.5).astype(np.float32), rng.normal(size=channels).astype(np.float32)
        m, v = (0.1 * rng.normal(size=channels)).astype(np.float32), (rng.random(channels) + 0.5).astype(np.float32)
        for library in ("torch", "numpy"):
            rows += _measure_case(library, name, fmt, x, g, b, m, v)
    return rows


def _measure_case(library, name, fmt, x, g, b, m, v) -> list[dict]:
    channel = 1 if fmt == "NCHW" else 3
    # The layer takes an MLP batch as the rank-2 array a model passes it.
    layer_x = x.reshape(x.shape[0], -1) if fmt == "NHWC" and x.shape[1] == 1 else x
    native = {}
    if library == "torch":
        tx, tg, tb, tm, tv, tl = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x, g, b, m, v, layer_x))
        native_x = tx if channel == 1 else tx.movedim(-1, 1)
        rm, rv = tm.clone(), tv.clone()
        kernels, xp = torch_kernels, None
        native = {
            "train": lambda: F.batch_norm(native_x, rm, rv, tg, tb, True, 0.1, EPSILON),
            "infer": lambda: F.batch_norm(native_x, tm, tv, tg, tb, False, 0.1, EPSILON),
        }
    else:
        tx, tg, tb, tm, tv, tl = x, g, b, m, v, layer_x
        kernels, xp = numpy_kernels, np
    floor = _floor_calls(tx, tg, tb, tm, tv, channel)
    _, state = bn.batch_norm(tl, None, decay=0.9, scale=True, fused=True, data_format=fmt)
    calls = {
        "train": (
            lambda: kernels.fused_training_core(tx, tg, tb, EPSILON, channel, xp=xp),
            lambda: bn.fused_batch_norm(tx, tg, tb, epsilon=EPSILON, data_format=fmt),
            lambda: bn.batch_norm(tl, state, decay=0.9, scale=True, fused=True, data_format=fmt),
        ),
        "infer": (
            lambda: kernels.fused_inference(tx, tg, tb, tm, tv, EPSILON, channel, xp=xp),
            lambda: bn.fused_batch_norm(
                tx, tg, tb, tm, tv, epsilon=EPSILON, data_format=fmt, is_training=False
            ),
            lambda: bn.batch_norm(
                tl, state, decay=0.9, scale=True, fused=True, data_format=fmt, is_training=False
            ),
        ),
    }
    rows = []
    for operation, (kernel, public, layer) in calls.items():
        if kernel() is NotImplemented:  # a small batch: the generic kernel runs
            kernel = _generic(operation, tx, tg, tb, tm, tv, channel)
        timed = {
            "floor": floor[operation], "checked": _floors.checked(floor[operation], (tl, None, None, *state)),
            "kernel": kernel, "public": public, "layer": layer,
        }
        if operation in native:
            timed["native"] = native[operation]
        rows.append({"library": library, "shape": name, "operation": operation, "native": None, **_us(timed)})
    return rows


def _floor_calls(x, scale, offset, mean, variance, channel) -> dict:
    """The fused formula's operations with nothing around them (``_floors``), either library,
    the ``[C]`` variables shaped within the call (``_floors.per_channel``)."""

    def shaped(*vectors):
        return [_floors.per_channel(vector, x, channel) for vector in vectors]

    def train():
        batch_mean, batch_variance = _floors.batch_statistics(x, channel)
        return _floors.fused(x, *shaped(batch_mean, batch_variance, scale, offset), EPSILON)

    def infer():
        return _floors.fused(x, *shaped(mean, variance, scale, offset), EPSILON)

    return {"train": train, "infer": infer}


def _generic(operation, x, scale, offset, mean, variance, channel):
    """The generic kernel the public function falls back to, called directly."""
    xp = array_api_compat.array_namespace(x)
    if operation == "train":
        return lambda: _normalize.fused_training_core.generic(x, scale, offset, EPSILON, channel, xp=xp)
    return lambda: _normalize.fused_inference.generic(
        x, scale, offset, mean, variance, EPSILON, channel, xp=xp
    )


def render(rows: list[dict]) -> str:
    lines = [
        "# Per-call cost at small sizes",
        "",
        "Generated by `python benchmarks/call_overhead.py` (the module docstring says what each"
        " column is). Times in µs; the machine is shared, so read the columns of one row"
        " against each other.",
        "",
        f"- {platform.processor() or platform.machine()}, torch {torch.__version__}"
        f" ({torch.get_num_threads()} threads), numpy {np.__version__}",
        "",
        "| library | shape | operation | native | floor | floor / native | floor + checks | (floor + checks) / native | fast-path kernel | fused_batch_norm | public − kernel | batch_norm layer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        native = "—" if r["native"] is None else f"{r['native']:.1f}"
        floor = f"{r['floor']:.1f}"
        ratio = "—" if r["native"] is None else f"{r['floor'] / r['native']:.2f}×"
        checked = "—" if r["native"] is None else f"{r['checked'] / r['native']:.2f}×"
        lines.append(
            f"| {r['library']} | {r['shape']} | {r['operation']} | {native} | {floor} | {ratio} |"
            f" {r['checked']:.1f} | {checked} | {r['kernel']:.1f} |"
            f" {r['public']:.1f} | {r['public'] - r['kernel']:.1f} | {r['layer']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table here (Markdown)")
    args = parser.parse_args(argv)
    text = render(measure())
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Robustness figures: ill-conditioned batches, float16 near its range, edge shapes, threads.

Usage::

    PYTHONPATH=src:. python benchmarks/robustness.py [--out docs/robustness.md]

Writes ``docs/robustness.md`` (and the same figures as ``docs/robustness.json``).
Every figure is measured in this run, on every CPU backend installed, with the
fast paths on and off; TensorFlow's own errors are read from the
``ill_conditioned`` conformance goldens (its float32 result against its own
float64 result for the same inputs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from conformance import catalogue, runner  # noqa: E402
from conformance.backends import BACKENDS  # noqa: E402

import bn_portable as bn  # noqa: E402

CPU_BACKENDS = [b for b in BACKENDS if b.library not in ("cupy", "torch_cuda")]
RATIO = 1.0e4
TARGET = 1e-3  # float32 variance within 1e-3 relative of float64 at |mean|/σ = 1e4
SHAPES = {"small": (31, 16, 16, 8), "large": (16, 32, 32, 16)}  # below / above 2¹⁶ values


def _batch(shape, loc, scale, dtype, seed=9):
    rng = np.random.default_rng(seed)
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def _variance64(x, weights=None):
    x64 = x.astype(np.float64)
    axes = (0, 1, 2)
    if weights is None:
        return x64.var(axis=axes)
    w = np.broadcast_to(weights.reshape(-1, 1, 1, 1).astype(np.float64), x.shape)
    mean = (w * x64).sum(axis=axes, keepdims=True) / w.sum(axis=axes, keepdims=True)
    return (w * (x64 - mean) ** 2).sum(axis=axes) / w.sum(axis=axes)


def _paths(backend, x, weights, dtype):
    """name -> (float64 reference variance, the path's variance as NumPy)."""
    channels = x.shape[-1]
    n = x.size // channels
    xb = backend.asarray(x, dtype)
    wb = backend.asarray(weights, dtype)
    w4 = backend.asarray(weights.reshape(-1, 1, 1, 1), dtype)
    ones = backend.asarray(np.ones(channels, np.float32), "float32")
    zeros = backend.asarray(np.zeros(channels, np.float32), "float32")
    biased, weighted = _variance64(x), _variance64(x, weights)
    out = {}
    out["moments"] = (biased, backend.call(lambda a: bn.moments(a, [0, 1, 2])[1], xb))
    out["weighted_moments"] = (
        weighted, backend.call(lambda a, w: bn.weighted_moments(a, [0, 1, 2], w)[1], xb, w4)
    )
    out["fused_batch_norm"] = (
        biased * n / (n - 1), backend.call(lambda a, s, o: bn.fused_batch_norm(a, s, o)[2], xb, ones, zeros)
    )
    layer = {
        "batch_norm fused": ({"fused": True}, None),
        "batch_norm non-fused": ({"fused": False}, None),
        "batch_norm weighted": ({}, wb),
        "batch_norm zero-debias": ({"zero_debias_moving_mean": True, "fused": True}, None),
    }
    for name, (options, w) in layer.items():
        if w is None:
            state = backend.call(lambda a, o=options: bn.batch_norm(a, None, decay=0.0, **o)[1], xb)
            reference = biased
        else:
            state = backend.call(
                lambda a, w_, o=options: bn.batch_norm(a, None, decay=0.0, batch_weights=w_, **o)[1], xb, w
            )
            reference = weighted
        out[name] = (reference, state.moving_variance)
    return {name: (ref, backend.to_numpy(value)) for name, (ref, value) in out.items()}, n


def _relative(value, reference):
    return float(np.max(np.abs(np.asarray(value, np.float64) - reference) / np.abs(reference)))


def ill_conditioned():
    rows = []
    for size, shape in SHAPES.items():
        x = _batch(shape, 12345.678, 12345.678 / RATIO, np.float32)
        weights = np.random.default_rng(1).uniform(0.05, 2.0, shape[0]).astype(np.float32)
        for backend in CPU_BACKENDS:
            if backend.absent_reason():
                continue
            results, n = _paths(backend, x, weights, "float32")
            for path, (reference, value) in results.items():
                error = _relative(value, reference)
                if path.startswith("batch_norm"):
                    # tf-slim's paths keep the biased or the Bessel-corrected
                    # variance; the closer of the two is the path's own.
                    error = min(error, _relative(value, reference * n / (n - 1)))
                rows.append({"size": size, "shape": list(shape), "backend": backend.name,
                             "path": path, "relative_error": error})
    return rows


def tensorflow_errors():
    """TensorFlow's float32/float16 variance against its float64 truth, per golden case."""
    goldens = runner.Goldens()
    rows = []
    for case in catalogue.cases():
        if not case["id"].startswith("ill_conditioned/") or case["op"] not in (
            "moments", "weighted_moments", "fused_batch_norm"
        ):
            continue
        arrays = goldens.arrays(case)
        name = "batch_variance" if case["op"] == "fused_batch_norm" else "variance"
        tf_value, truth = arrays[name], arrays[runner.TRUTH + name]
        ours = {}
        for backend in CPU_BACKENDS:
            if backend.absent_reason():
                continue
            meta = goldens.meta(case)
            dtypes = {k: r.get("logical_dtype", r["dtype"]) for k, r in meta["arrays"].items()}
            if any(d not in backend.dtypes for d in dtypes.values() if d.startswith("float")):
                continue
            inputs = runner._Inputs(arrays, dtypes, backend)
            produced = runner._RUNNERS[case["op"]](case, inputs, backend)
            ours[backend.name] = _relative(produced[name], truth)
        rows.append({"case": case["id"], "tensorflow": _relative(tf_value, truth),
                     "worst_backend": max(ours.values()), "backends": ours})
    return rows


def float16_near_range():
    x = _batch((16, 16, 16, 16), 6.0e4, 60.0, np.float16)
    reference = x.astype(np.float64).var(axis=(0, 1, 2))
    n = x.size // x.shape[-1]
    rows = []
    for backend in CPU_BACKENDS:
        if backend.absent_reason() or "float16" not in backend.dtypes:
            continue
        xb = backend.asarray(x, "float16")
        ones = backend.asarray(np.ones(16, np.float32), "float32")
        zeros = backend.asarray(np.zeros(16, np.float32), "float32")
        _, variance = backend.call(lambda a: bn.moments(a, [0, 1, 2]), xb)
        y, _, fused_variance = backend.call(lambda a, s, o: bn.fused_batch_norm(a, s, o), xb, ones, zeros)
        layer_y, _ = backend.call(lambda a: bn.batch_norm(a, None, fused=False), xb)
        values = [backend.to_numpy(v) for v in (variance, y, fused_variance, layer_y)]
        rows.append({
            "backend": backend.name,
            "all_finite": bool(all(np.all(np.isfinite(v)) for v in values)),
            "moments_relative_error": _relative(values[0], reference),
            "fused_relative_error": _relative(values[2], reference * n / (n - 1)),
        })
    return rows


def edge_cases():
    """The empty-batch and one-element goldens, replayed with every warning an error."""
    goldens = runner.Goldens()
    selected = [c for c in catalogue.cases() if "empty_batch" in c["id"] or "/n1/" in c["id"]]
    rows = []
    for backend in CPU_BACKENDS:
        if backend.absent_reason():
            continue
        passed = failed = warned = 0  # a case the backend cannot hold counts as neither
        for case in selected:
            arrays, meta = goldens.arrays(case), goldens.meta(case)
            dtypes = {k: r.get("logical_dtype", r["dtype"]) for k, r in meta["arrays"].items()}
            if all(d in backend.dtypes for d in dtypes.values() if d.startswith("float")):
                # the call itself, with NumPy's floating-point warnings on (the
                # runner silences them for its NaN cases)
                with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
                    warnings.simplefilter("always")
                    runner._RUNNERS[case["op"]](case, runner._Inputs(arrays, dtypes, backend), backend)
                warned += any(issubclass(w.category, RuntimeWarning) for w in caught)
            outcome = runner.run_case(case, arrays, backend, meta)
            passed += outcome.status == "pass"
            failed += outcome.status == "fail"
        rows.append({"backend": backend.name, "cases": len(selected), "passed": passed,
                     "failed": failed, "with_runtime_warnings": warned})
    return rows


def threads(calls=64, workers=8):
    """8 threads calling at once give bitwise the results of one thread."""
    rows = []
    x = _batch((16, 32, 32, 16), 12345.678, 1.0, np.float32)  # above the fast paths' cut-off
    for backend in CPU_BACKENDS:
        if backend.absent_reason() or backend.library not in ("numpy", "torch"):
            continue
        xb = backend.asarray(x, "float32")

        def call(_, backend=backend, xb=xb):
            y, state = backend.call(lambda a: bn.batch_norm(a, None, fused=True), xb)
            _, variance = backend.call(lambda a: bn.moments(a, [0, 1, 2]), xb)
            return [backend.to_numpy(v).tobytes() for v in (y, state.moving_variance, variance)]

        expected = call(None)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(call, range(calls)))
        rows.append({"backend": backend.name, "threads": workers, "calls": calls,
                     "identical": sum(r == expected for r in results)})
    return rows


def render(figures):
    lines = [
        "# Robustness",
        "",
        "<!-- Generated by `PYTHONPATH=src:. python benchmarks/robustness.py`; do not edit. -->",
        "",
        f"Measured on Python {figures['platform']['python']}, {figures['platform']['machine']}; "
        "every CPU backend installed, fast paths on (`numpy`, `torch`) and off (`-generic`).",
        "",
        "## float32, |mean|/σ = 1e4",
        "",
        f"Mean 12345.678, σ 1.2346, two sizes: {SHAPES['small']} (below the NumPy fast paths' "
        f"2¹⁶-value cut-off: the generic kernels) and {SHAPES['large']} (above it). Each cell is "
        "the worst relative error of the per-channel variance against float64 over both sizes "
        f"(target: below {TARGET:g}). The layer's paths are read from `moving_variance` with "
        "`decay=0`, against the biased or Bessel-corrected variance, whichever the path keeps.",
        "",
    ]
    rows = figures["ill_conditioned"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    paths = list(dict.fromkeys(r["path"] for r in rows))
    lines += ["| path | " + " | ".join(backends) + " |", "| --- |" + " --- |" * len(backends)]
    for path in paths:
        cells = []
        for backend in backends:
            worst = max(r["relative_error"] for r in rows if r["path"] == path and r["backend"] == backend)
            cells.append(f"{worst:.1e}" + ("" if worst < TARGET else " ❌"))
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Never worse than TensorFlow",
        "",
        "The `ill_conditioned` goldens (`conformance/catalogue.py`): TensorFlow's variance "
        "against TensorFlow's own float64 result for the same inputs, and the worst over "
        "every CPU backend of bn_portable's against the same float64 result (relative).",
        "",
        "| case | TensorFlow | bn_portable (worst backend) |",
        "| --- | --- | --- |",
    ]
    for row in figures["tensorflow"]:
        mark = "" if row["worst_backend"] <= max(row["tensorflow"], 1e-6) else " ❌"
        lines.append(f"| `{row['case']}` | {row['tensorflow']:.1e} | {row['worst_backend']:.1e}{mark} |")
    lines += [
        "",
        "## float16 near 6e4",
        "",
        "float16 (16, 16, 16, 16), mean 6e4 (float16's largest value is 65504), σ 60: a float16 "
        "sum would overflow after two values. Every output finite, and the variance against "
        "float64 (relative; `moments` returns float16, whose rounding alone is up to 4.9e-4, "
        "`fused_batch_norm` float32). Outputs checked: the moments, the fused kernel's `y` and "
        "statistics, and `batch_norm`'s non-fused `y`:",
        "",
        "| backend | all finite | moments | fused_batch_norm |",
        "| --- | --- | --- | --- |",
    ]
    for row in figures["float16"]:
        lines.append(f"| {row['backend']} | {'yes' if row['all_finite'] else 'NO'} | "
                     f"{row['moments_relative_error']:.1e} | {row['fused_relative_error']:.1e} |")
    lines += [
        "",
        "## Empty batch and one element per channel",
        "",
        "The conformance goldens with an empty batch or one element per channel (TensorFlow's "
        "NaN statistics for an empty batch, variance 0 for one element), replayed: cases passed "
        "(against TensorFlow's outputs), and cases whose call raised a `RuntimeWarning` "
        "(NumPy's floating-point warnings switched on).",
        "",
        "| backend | passed | failed | with RuntimeWarnings |",
        "| --- | --- | --- | --- |",
    ]
    for row in figures["edges"]:
        ran = row["passed"] + row["failed"]
        absent = row["cases"] - ran
        note = f" ({absent} n/a: no float16)" if absent else ""
        lines.append(f"| {row['backend']} | {row['passed']}/{ran}{note} | {row['failed']} | "
                     f"{row['with_runtime_warnings']} |")
    lines += [
        "",
        "## Threads",
        "",
        "`batch_norm` (fused, training) and `moments` on float32 (16, 32, 32, 16), called from "
        "8 threads at once: calls whose outputs are bitwise identical to a single-threaded call.",
        "",
        "| backend | identical |",
        "| --- | --- |",
    ]
    for row in figures["threads"]:
        lines.append(f"| {row['backend']} | {row['identical']}/{row['calls']} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "robustness.md")
    args = parser.parse_args(argv)
    figures = {
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
        "ill_conditioned": ill_conditioned(),
        "tensorflow": tensorflow_errors(),
        "float16": float16_near_range(),
        "edges": edge_cases(),
        "threads": threads(),
    }
    args.out.write_text(render(figures))
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

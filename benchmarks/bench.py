"""Batch-normalization timings: bn_portable on each backend against native kernels.

Usage::

    python benchmarks/bench.py [--quick] [--out benchmarks/results/cpu.json]

Every implementation of one case (operation × shape × layout × dtype) is timed
in the same run, interleaved round-robin (one call of each, then the next
round), and summarised by the median of the rounds, so that a noisy, shared
machine slows all of them alike; ratios are taken against PyTorch's native
kernel from the same rounds. The JSON holds the machine, the library
versions, every median (and quartiles), the ratios and the peak extra memory
of the NumPy training kernel; PNG plots are written next to it, and
``benchmarks/report.py`` renders the Markdown tables from the JSON.

Implementations (absent ones are recorded with the reason):

- ``numpy fast`` / ``numpy generic``: bn_portable on NumPy, fast paths on / off;
  ``numpy fast 1t`` the fast paths with ``BN_PORTABLE_NUM_THREADS=1``;
- ``torch fast``: bn_portable on PyTorch (fast paths on);
- ``torch native``: ``torch.nn.functional.batch_norm`` (channels-last memory
  format for NHWC), or ``native_batch_norm_backward`` for the backward pass,
  with PyTorch's default thread count; ``torch native 1t`` the same on one
  thread (a one-thread kernel is not thrown off when another process holds
  the other core);
- ``numpy naive``: the array-API composite (mean, var, subtract, multiply, add);
- ``tensorflow``: TensorFlow's fused op, when TensorFlow is importable (``nox -s
  bench_tensorflow`` runs the harness in TensorFlow's environment, NumPy < 2);
- ``jax fast`` / ``jax naive``: bn_portable under ``jax.jit`` and the naive
  ``jax.numpy`` composite under ``jax.jit``;
- ``memory roof``: a copy of the input's bytes into a preallocated output
  (one NumPy thread), the floor for any kernel that reads x and writes y.

The cases and their constants are in ``_kernel_cases.py``, the implementations
in ``_kernel_numpy.py``, ``_kernel_torch.py`` and ``_kernel_tf_jax.py``, the
plots and the terminal summary in ``_kernel_plots.py``; this script measures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from _kernel_cases import (
    DTYPES,
    LAYOUTS,
    OPERATIONS,
    QUICK_SHAPES,
    REFERENCE,
    SHAPES,
    TARGET_SHAPE,
    Case,
)
from _kernel_numpy import numpy_impls, roof_impl
from _kernel_plots import plot, summarise
from _kernel_tf_jax import jax_impls, tensorflow_impls
from _kernel_torch import torch_impls
from _timing import load_average, machine_info, optional, peak_extra_memory, time_case

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and rounds")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu.json")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds of sleep before each implementation's calls (lets other libraries' threads "
        "go idle; on a virtual machine it also lets idle cores sleep, which slows "
        "multi-threaded kernels: off by default)",
    )
    parser.add_argument("--inner", type=int, default=3, help="calls per round; the quickest counts")
    parser.add_argument("--shapes", nargs="+", default=None, help="only these shape names")
    parser.add_argument("--operations", nargs="+", default=None, choices=OPERATIONS)
    args = parser.parse_args(argv)

    from tqdm import tqdm

    import bn_portable as bn

    torch, torch_missing = optional("torch")
    if torch is not None and args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    jax, jax_missing = optional("jax")
    tf, tf_missing = optional("tensorflow")
    if jax is not None:
        jax.config.update("jax_platforms", "cpu")
    rounds = args.rounds or (7 if args.quick else 15)
    warmup = 2
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK_SHAPES]
    if args.shapes:
        shapes = [s for s in SHAPES if s[0] in args.shapes]
    has_backward = hasattr(bn, "fused_batch_norm_grad") and hasattr(bn, "batch_norm_vjp")
    operations = [op for op in OPERATIONS if op != "backward" or has_backward]
    if args.operations:
        operations = [op for op in operations if op in args.operations]
    notes = []
    if not has_backward:
        notes.append(
            "backward skipped: bn_portable.fused_batch_norm_grad / batch_norm_vjp are not available"
        )
        print(notes[-1], file=sys.stderr)

    absent = {
        "tensorflow": tf_missing or None,
        "torch": torch_missing or None,
        "jax": jax_missing or None,
    }
    info = machine_info(torch)
    # The target shape first: its figures are the ones the targets are judged
    # on, and a run started on a quiet machine is quietest at its start.
    shapes.sort(key=lambda s: s[0] != TARGET_SHAPE)
    cases = [
        Case(op, name, layout, dtype, nchw if layout == "NCHW" else nhwc)
        for name, nchw, nhwc in shapes
        for op in operations
        for layout in LAYOUTS
        for dtype in DTYPES
    ]
    rng = random.Random(0)
    records = []
    progress = tqdm(total=len(cases) * rounds, desc="bench", unit="round")
    for case in cases:
        impls: dict[str, Any] = {}
        impls.update(numpy_impls(case, bn))
        if torch is not None:
            impls.update(torch_impls(case, bn, torch))
        else:
            impls["torch native"] = absent["torch"]
        if tf is not None:
            impls.update(tensorflow_impls(case, tf))
        else:
            impls["tensorflow"] = absent["tensorflow"]
        if jax is not None:
            impls.update(jax_impls(case, bn, jax))
        else:
            impls["jax fast"] = absent["jax"]
        impls["memory roof"] = roof_impl(case)
        callables = {k: v for k, v in impls.items() if callable(v)}
        skipped = {k: v for k, v in impls.items() if not callable(v)}
        progress.set_postfix_str(case.key)
        results = time_case(
            callables,
            rounds,
            warmup,
            rng,
            lambda: progress.update(1),
            settle=args.settle,
            inner=args.inner,
        )
        for name, reason in skipped.items():
            results[name] = {"skipped": reason}
        reference = results.get(REFERENCE, {}).get("median_ms")
        for result in results.values():
            if reference and "median_ms" in result:
                result["ratio_vs_torch_native"] = result["median_ms"] / reference
        record = {
            "load_average_1min": (load_average() or [None])[0],
            "operation": case.operation,
            "shape_name": case.shape_name,
            "shape": list(case.shape),
            "layout": case.layout,
            "dtype": case.dtype,
            "input_bytes": int(case.x.nbytes),
            "results": results,
        }
        if case.operation == "train":
            record["peak_extra_memory_vs_input"] = {
                name: peak_extra_memory(impls[name], case.x.nbytes)
                for name in ("numpy fast", "numpy generic", "numpy naive")
                if callable(impls.get(name))
            }
        records.append(record)
    progress.close()
    order = [name for name, _, _ in SHAPES]
    records.sort(key=lambda record: order.index(record["shape_name"]))  # stable: op, layout, dtype
    info["load_average_end"] = load_average()
    payload = {
        "schema": 1,
        "quick": args.quick,
        "rounds": rounds,
        "warmup": warmup,
        "settle_s": args.settle,
        "calls_per_round": args.inner,
        "reference": REFERENCE,
        "target_shape": TARGET_SHAPE,
        "machine": info,
        "absent": {k: v for k, v in absent.items() if v},
        "notes": notes,
        "cases": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    print(f"wrote {args.out}")
    if not args.no_plots:
        for path in plot(payload, args.out):
            print(f"wrote {path}")
    summarise(payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

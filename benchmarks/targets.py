"""The speed targets of the project, judged on the saved runs: ``benchmarks/results/targets.md``.

Usage::

    python benchmarks/targets.py [--out benchmarks/results/targets.md]

Reads ``results/models.json`` (``models.py``) and ``results/layer_paths.json``
(``layer_paths.py``). Every target is a ratio to the native batch norm from the
same run; where a target is below what the accuracy contract allows in Python,
the row also gives the measured floor (``floor …``, the fewest operations of the
backend's library within the contract, timed in the same rounds). This is the
maintainers' report; docs/performance.md is the users' page.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _runs import (
    INFERENCE_PATHS,
    LARGE,
    RESULTS,
    TRAINING_PATHS,
    Run,
    machine_line,
    path_key,
    times,
)

#: (label, model, mode, variant, limit)
MODEL_TARGETS = [
    ("ResNet-18 training step, fused", "ResNet-18", "train", "fused", 1.05),
    ("ResNet-18 training step, non-fused", "ResNet-18", "train", "non-fused", 1.08),
    ("ResNet-18 inference, fused", "ResNet-18", "infer", "fused", 1.05),
    ("ResNet-18 inference, non-fused", "ResNet-18", "infer", "non-fused", 1.08),
    ("channels-last ResNet-18 training step, fused", "ResNet-18 channels-last", "train", "fused", 1.08),
    ("channels-last ResNet-18 training step, non-fused", "ResNet-18 channels-last", "train", "non-fused", 1.10),
    ("channels-last ResNet-18 inference, fused", "ResNet-18 channels-last", "infer", "fused", 1.08),
    ("channels-last ResNet-18 inference, non-fused", "ResNet-18 channels-last", "infer", "non-fused", 1.10),
    ("MLP training step, fused", "MLP", "train", "fused", 1.08),
    ("MLP training step, non-fused", "MLP", "train", "non-fused", 1.10),
    ("MLP inference, fused", "MLP", "infer", "fused", 1.08),
    ("MLP inference, non-fused", "MLP", "infer", "non-fused", 1.10),
    ("compiled ResNet-18 training step, fused", "ResNet-18", "train compiled", "fused", 1.03),
    ("compiled ResNet-18 training step, non-fused", "ResNet-18", "train compiled", "non-fused", 1.03),
    ("compiled MLP training step, fused", "MLP", "train compiled", "fused", 1.05),
    ("compiled MLP training step, non-fused", "MLP", "train compiled", "non-fused", 1.05),
]


def _row(label: str, value: float | None, limit: float, floor: float | None = None) -> str:
    met = "–" if value is None else ("yes" if value <= limit else "no")
    return f"| {label} | ≤ {limit:.2f}× | {times(value)} | {met} | {times(floor)} |"


def model_rows(models: Run) -> list[str]:
    rows = []
    for label, model, mode, variant, limit in MODEL_TARGETS:
        key = f"{model}/{mode}"
        rows.append(_row(label, models.ratio(key, variant), limit, models.ratio(key, f"floor {variant}")))
    layer = next((k for k in models.cases if k.startswith("layer ")), None)
    if layer:
        for variant in ("fused", "non-fused"):
            rows.append(_row(f"JAX layer ({layer.split()[1]}), {variant}, vs Flax two-pass",
                             models.ratio(layer, variant), 1.0))
        flax = models.ratio(layer, "flax")
        fused = models.ratio(layer, "fused")
        relative = None if not flax or fused is None else fused / flax
        # The floor: Flax's own two-pass statistics against its one-pass ones, same run.
        floor = None if not flax else 1.0 / flax
        rows.append(_row("JAX layer, fused, vs Flax's default one-pass", relative, 1.4, floor))
    return rows


#: The variants whose page faults the report tables, per end-to-end PyTorch case.
FAULT_VARIANTS = ("native", "fused", "non-fused", "floor fused", "floor non-fused")


def path_rows(paths: Run) -> list[str]:
    rows = []
    limits = {
        ("torch", "NCHW", "train"): 1.3, ("torch", "NHWC", "train"): 1.6,
        ("numpy", "NCHW", "train"): 1.5, ("numpy", "NHWC", "train"): 3.0,
        ("numpy", "NCHW", "infer"): 2.5, ("numpy", "NHWC", "infer"): 3.0,
    }
    for backend in ("torch", "numpy"):
        for layout in ("NCHW", "NHWC"):
            for mode, variants in (("train", TRAINING_PATHS), ("infer", INFERENCE_PATHS)):
                key = path_key(backend, layout, "float32", mode)
                for variant in variants:
                    if backend == "torch" and mode == "infer":
                        limit = 2.0 if variant == "fused" else 1.3
                    else:
                        limit = limits[(backend, layout, mode)]
                    floor_name = "floor fused" if variant == "fused" else "floor non-fused"
                    floor = paths.ratio(key, floor_name)
                    label = f"{backend} {layout} {mode}, {variant} (float32)"
                    rows.append(_row(label, paths.ratio(key, variant), limit, floor))
    for dtype in ("float16", "bfloat16"):
        for layout in ("NCHW", "NHWC"):
            for mode, variants in (("train", TRAINING_PATHS), ("infer", INFERENCE_PATHS)):
                key = path_key("torch", layout, dtype, mode)
                slowest = max(variants, key=lambda v: paths.ratio(key, v) or 0.0)
                floor_name = "floor fused" if slowest == "fused" else "floor non-fused"
                label = f"torch {layout} {mode} {dtype}, slowest path ({slowest})"
                rows.append(_row(label, paths.ratio(key, slowest), 2.0, paths.ratio(key, floor_name)))
    return rows


def memory_rows(paths: Run) -> list[str]:
    rows = []
    for dtype in ("float32", "float16"):
        for layout in ("NCHW", "NHWC"):
            for mode, variants in (("train", TRAINING_PATHS), ("infer", INFERENCE_PATHS)):
                key = path_key("numpy", layout, dtype, mode)
                for variant in variants:
                    value = paths.memory(key, variant)
                    met = "–" if value is None else ("yes" if value <= 1.25 else "no")
                    rows.append(f"| NumPy {layout} {mode} {dtype}, {variant} | ≤ 1.25× | {times(value)} | {met} |")
    return rows


SMALL = [  # (label, shape, layout, mode, limit)
    ("256×512 training forward", "256x512", "NHWC", "train", 1.6),
    ("256×512 inference", "256x512", "NHWC", "infer", 1.6),
    ("256×512 training step", "256x512", "NHWC", "step", 1.3),
    ("8×32×16×16 training forward", "8x32x16x16", "NCHW", "train", 1.6),
    ("8×32×16×16 inference", "8x32x16x16", "NCHW", "infer", 2.5),
    ("8×32×16×16 training step", "8x32x16x16", "NCHW", "step", 1.3),
    ("64×64 training forward", "64x64", "NHWC", "train", 2.5),
    ("64×64 inference", "64x64", "NHWC", "infer", 2.5),
    ("64×64 training step", "64x64", "NHWC", "step", 2.5),
]


def small_rows(paths: Run) -> list[str]:
    """The small-batch rows, each with the floor after the least checks a public call makes
    (``layer_paths``' ``floor … + checks``; a step's is the floor module's step after them)."""
    rows = []
    for label, shape, layout, mode, limit in SMALL:
        key = path_key("torch", layout, "float32", mode, shape)
        for variant in ("fused", "non-fused"):
            floor_name = "floor fused" if variant == "fused" else "floor non-fused"
            row = _row(f"{label}, {variant}", paths.ratio(key, variant), limit, paths.ratio(key, floor_name))
            rows.append(f"{row} {times(paths.ratio(key, f'{floor_name} + checks'))} |")
    return rows


def _other_processors(*runs: Run) -> list[str]:
    """A warning where a run's previous saved run was on another processor."""
    changed = sorted(
        {
            (run.payload["previous_cpu_model"], run.machine.get("cpu_model"))
            for run in runs
            if run.payload.get("previous_cpu_model") not in (None, run.machine.get("cpu_model"))
        }
    )
    return [
        f"The previous saved run was on another processor ({before}; this run: {now}): "
        "ratios move with the processor as well as with the code, so a flag here compares "
        "both (`compare_versions.py` compares code alone)."
        for before, now in changed
    ] + ([""] if changed else [])


def fault_section(models: Run) -> list[str]:
    """The PyTorch model cases' page faults per call (``_timing.time_case``), where counted."""
    rows = []
    for key, case in models.cases.items():
        counts = [models.faults(key, variant) for variant in FAULT_VARIANTS]
        if case.get("backend") == "torch" and any(count is not None for count in counts):
            cells = " | ".join("–" if count is None else f"{count:,.0f}" for count in counts)
            rows.append(f"| {key} | {cells} |")
    if not rows:
        return []
    return [
        "Minor page faults per call (median over the rounds): fresh memory costs a microsecond",
        "or more per 4 KB page, and how much of it a call gets depends on what the allocator",
        "handed back to the system before, so a variant with many more faults than the others",
        "was measured in a slower state of memory, not necessarily with slower code.",
        "",
        f"| case | {' | '.join(FAULT_VARIANTS)} |",
        "| --- |" + " --- |" * len(FAULT_VARIANTS),
        *rows,
        "",
    ]


def render(models: Run, paths: Run) -> str:
    header = "| target | limit | measured | met | floor in Python |\n| --- | --- | --- | --- | --- |"
    regressions = models.payload.get("regressions", []) + paths.payload.get("regressions", [])
    lines = [
        "# Speed targets",
        "",
        "Generated by `benchmarks/targets.py` from `benchmarks/results/models.json` and",
        "`benchmarks/results/layer_paths.json`. Every figure is a ratio to the native batch",
        "norm timed in the same interleaved rounds, the median of the run's passes over every case",
        "(each pass's ratios are listed in the JSON as `pass_ratios`). *Floor in Python*: the fewest whole-array",
        "operations of the backend's library (PyTorch, or NumPy on the NumPy rows) that compute",
        "the path's formula within the accuracy contract (conformance/README.md), with the moving",
        "averages' small operations in training (the fused path's variance Bessel-corrected first,",
        "as TensorFlow's fused kernel and PyTorch's move it), timed in the same rounds: what the formula costs",
        "in that library's operations (not a strict bound: cache blocking beats it where fresh",
        "memory costs more than the arithmetic). A training step's floor, per layer and end to end,",
        "runs those operations as the batch norm (`_models.FloorBatchNorm`, PyTorch's backward",
        "kernel behind a minimal autograd node), eagerly, differentiated by autograd as the native",
        "step is. For the JAX row, Flax's own two-pass statistics.",
        "",
        f"- Models: {machine_line(models)}.",
        f"- Paths: {machine_line(paths)}.",
        "",
        "## End to end (eager unless compiled)",
        "",
        header, *model_rows(models),
        "",
        *fault_section(models),
        f"## Every path at {LARGE}",
        "",
        header, *path_rows(paths),
        "",
        "## NumPy peak memory (output included, over the input's bytes)",
        "",
        "| case | limit | measured | met |\n| --- | --- | --- | --- |", *memory_rows(paths),
        "",
        "## Small batches (torch, float32)",
        "",
        "*Floor + checks*: the floor after the least any checked call reads first, the layer",
        "call's arrays' metadata (type, shape, dtype, device, layout) as one key looked up in a",
        "dict: a public call must raise on bad input without reading values, so none comes in",
        "under it. Where it is above the limit, so is every checked batch norm in Python.",
        "",
        "| target | limit | measured | met | floor in Python | floor + checks |",
        "| --- | --- | --- | --- | --- | --- |", *small_rows(paths),
        "",
        "## Slower than the previous saved run by more than 25 %",
        "",
        *_other_processors(models, paths),
        *([f"- {line}" for line in regressions] or ["None."]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=RESULTS / "models.json")
    parser.add_argument("--paths", type=Path, default=RESULTS / "layer_paths.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "targets.md")
    args = parser.parse_args(argv)
    args.out.write_text(render(Run(args.models), Run(args.paths)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

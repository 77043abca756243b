"""docs/performance.md, for a user choosing a path: what a model costs, which path to pick, the tables.

Usage::

    python benchmarks/page.py [--out docs/performance.md]

Reads the saved runs ``results/models.json`` and ``results/layer_paths.json``;
every number on the page comes from them. The targets and whether they are met
are the maintainers' report (``targets.py``), not this page.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _runs import LARGE, RESULTS, Run, machine_line, path_key, times

DOCS = RESULTS.parent.parent / "docs"
MODELS = ("ResNet-18", "ResNet-18 channels-last", "MLP")
MODES = {"train": "training step", "infer": "inference", "train compiled": "training step, compiled"}


def model_table(models: Run) -> list[str]:
    lines = ["| model | mode | fused | non-fused (default) |", "| --- | --- | --- | --- |"]
    for model in MODELS:
        for mode, label in MODES.items():
            key = f"{model}/{mode}"
            if key in models.cases:
                lines.append(
                    f"| {model} | {label} | {times(models.ratio(key, 'fused'))} | "
                    f"{times(models.ratio(key, 'non-fused'))} |"
                )
    return lines


def jax_table(models: Run) -> list[str]:
    keys = [k for k in models.cases if models.cases[k].get("backend") == "jax"]
    if not keys:
        reason = models.payload.get("absent", {}).get("jax", "not run")
        return [f"JAX cases not measured in this run ({reason})."]
    lines = [
        "| case | bn_portable fused | bn_portable non-fused | Flax default (one-pass variance) |",
        "| --- | --- | --- | --- |",
    ]
    for key in keys:
        lines.append(
            f"| {key} | {times(models.ratio(key, 'fused'))} | {times(models.ratio(key, 'non-fused'))} | "
            f"{times(models.ratio(key, 'flax'))} |"
        )
    return lines


def path_table(paths: Run, backend: str, dtypes: tuple[str, ...]) -> list[str]:
    names = ("fused", "non-fused", "renorm", "weighted", "zero-debias")
    lines = ["| dtype | layout | mode | " + " | ".join(names) + " |", "|" + " --- |" * (3 + len(names))]
    for dtype in dtypes:
        for layout in ("NCHW", "NHWC"):
            for mode in ("train", "infer"):
                key = path_key(backend, layout, dtype, mode)
                cells = [times(paths.ratio(key, name)) for name in names]
                lines.append(f"| {dtype} | {layout} | {mode} | " + " | ".join(cells) + " |")
    return lines


def memory_table(paths: Run) -> list[str]:
    names = ("fused", "non-fused", "renorm", "weighted", "zero-debias")
    lines = ["| dtype | layout | mode | " + " | ".join(names) + " |", "|" + " --- |" * (3 + len(names))]
    for dtype in ("float32", "float16"):
        for layout in ("NCHW", "NHWC"):
            for mode in ("train", "infer"):
                key = path_key("numpy", layout, dtype, mode)
                cells = [times(paths.memory(key, name)) for name in names]
                lines.append(f"| {dtype} | {layout} | {mode} | " + " | ".join(cells) + " |")
    return lines


def small_table(paths: Run) -> list[str]:
    lines = [
        "| batch | mode | fused | non-fused | native (µs) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for shape, layout in (("64x64", "NHWC"), ("256x512", "NHWC"), ("8x32x16x16", "NCHW"), (LARGE, "NCHW")):
        for mode in ("train", "infer", "step"):
            key = path_key("torch", layout, "float32", mode, shape)
            if key not in paths.cases:
                continue
            native = paths.median_ms(key, "native")
            lines.append(
                f"| {shape} | {mode} | {times(paths.ratio(key, 'fused'))} | "
                f"{times(paths.ratio(key, 'non-fused'))} | {'–' if native is None else f'{native * 1e3:.0f}'} |"
            )
    return lines


def advice(models: Run, paths: Run) -> list[str]:
    def r(key: str, variant: str) -> str:
        return times(paths.ratio(key, variant))

    def key(backend: str, layout: str, mode: str, dtype: str = "float32", shape: str = LARGE) -> str:
        return path_key(backend, layout, dtype, mode, shape)

    t_nchw, t_nhwc = key("torch", "NCHW", "train"), key("torch", "NHWC", "train")
    i_nchw, i_nhwc = key("torch", "NCHW", "infer"), key("torch", "NHWC", "infer")
    half, bf16 = key("torch", "NCHW", "train", "float16"), key("torch", "NCHW", "train", "bfloat16")
    n_nchw, n_nhwc = key("numpy", "NCHW", "train"), key("numpy", "NHWC", "train")
    small = key("torch", "NHWC", "train", shape="64x64")
    small_native = paths.median_ms(small, "native")
    resnet, channels_last, mlp = "ResNet-18/train", "ResNet-18 channels-last/train", "MLP/train"
    return [
        "- **Fused or not is a question of semantics first.** Both reproduce TensorFlow; they differ"
        " in what TensorFlow computes (the fused kernel moves the moving variance toward the"
        " Bessel-corrected batch variance and rounds differently): pick the one your checkpoint was"
        " trained with ([TensorFlow semantics](tensorflow-semantics.md)). Inside a model the difference in speed is"
        f" small: a ResNet-18 training step costs {times(models.ratio(resnet, 'fused'))} of the native"
        f" model's with the fused module and {times(models.ratio(resnet, 'non-fused'))} with the"
        f" non-fused one; an MLP's {times(models.ratio(mlp, 'fused'))} and"
        f" {times(models.ratio(mlp, 'non-fused'))}.",
        "- **The layer alone, float32, on PyTorch.** Training forward: fused"
        f" {r(t_nchw, 'fused')}, non-fused {r(t_nchw, 'non-fused')} of `F.batch_norm` in NCHW,"
        f" {r(t_nhwc, 'fused')} and {r(t_nhwc, 'non-fused')} in NHWC. Inference: fused"
        f" {r(i_nchw, 'fused')} and non-fused {r(i_nchw, 'non-fused')} in NCHW ({r(i_nhwc, 'fused')} and"
        f" {r(i_nhwc, 'non-fused')} in NHWC). PyTorch's inference kernel folds the mean into the"
        " offset (`x·α + (β − μ·α)`, one pass over x), which the accuracy contract rules out where"
        " |μ| ≫ σ: TensorFlow's fused formula centres first (three passes in PyTorch operations in"
        " NCHW, two in NHWC, where the scale and shift are one fused multiply-add),"
        " and its non-fused one keeps two rounded terms (two passes, no fused multiply-add: PyTorch's"
        " one-pass kernel rounds `x·α + β` once and so loses TensorFlow's exact cancellation where x"
        " equals the mean, a batch of one value per channel).",
        "- **Channels last.** PyTorch's native channels-last training kernel takes its statistics"
        " in one pass with plain float32 running sums, tens of ulps off at these sizes; bn_portable"
        " takes TensorFlow's two passes with accurate sums. A channels-last ResNet-18 training step"
        f" costs {times(models.ratio(channels_last, 'fused'))} (fused) and"
        f" {times(models.ratio(channels_last, 'non-fused'))} (non-fused) of the native model's.",
        "- **Half precision.** float16 and bfloat16 input is normalized in float32 and rounded once,"
        " as TensorFlow does, block by block (no float32 copy of the whole input); the NCHW training"
        f" forward costs {r(half, 'fused')} (fused) and {r(half, 'non-fused')} (non-fused) of PyTorch's"
        f" native float16 kernel, {r(bf16, 'fused')} and {r(bf16, 'non-fused')} in bfloat16."
        " PyTorch's own half kernel keeps its float32 values in registers; each PyTorch operation"
        " here writes a float32 block to memory and reads it back. The fewest whole-tensor PyTorch"
        f" operations that keep the float32 arithmetic cost {r(half, 'floor fused')} (fused formula)"
        f" and {r(half, 'floor non-fused')} (non-fused) there: no PyTorch-level formulation gets"
        " near the native half kernel.",
        f"- **NumPy.** Training costs {r(n_nchw, 'fused')} (fused) and {r(n_nchw, 'non-fused')}"
        " (non-fused) of PyTorch's native kernel in NCHW,"
        f" {r(n_nhwc, 'fused')} and {r(n_nhwc, 'non-fused')} in NHWC; float16 is dominated by"
        " NumPy's conversions, which are scalar code. Peak memory is in the table below.",
        "- **tf-slim's composite.** With batch weights the NCHW training forward costs"
        f" {r(t_nchw, 'weighted')} on PyTorch and {r(n_nchw, 'weighted')} on NumPy (weighted sums block"
        " by block, no input-sized temporary), zero-debias"
        f" {r(t_nchw, 'zero-debias')} and {r(n_nchw, 'zero-debias')}; renorm {r(t_nchw, 'renorm')}"
        f" and {r(n_nchw, 'renorm')}.",
        "- **Small batches.** A call issues about twenty small operations from Python whatever the size"
        f" (checks and plans are remembered per shape): at 64×64, where the native kernel takes"
        f" {'–' if small_native is None else f'{small_native * 1e3:.0f} µs'}, the fused training"
        f" forward costs {r(small, 'fused')}. Under `torch.compile` or `jax.jit` that work becomes"
        " part of the compiled program (the compiled rows above).",
    ]


def render(models: Run, paths: Run) -> str:
    lines = [
        "# Performance",
        "",
        "What bn_portable costs inside the models you run, which path and layout to pick, then the"
        " tables. Every figure is a ratio to the native batch norm timed in the same interleaved"
        " rounds, the median of three passes over every case made at different times of the run"
        " (on a shared machine, absolute times move by tens of percent between runs; the ratios"
        " much less). This page is generated from the saved runs:",
        "",
        "```",
        "nox -s bench   # or, one at a time:",
        "python benchmarks/models.py        # results/models.json",
        "python benchmarks/layer_paths.py   # results/layer_paths.json",
        "python benchmarks/page.py          # this page",
        "```",
        "",
        f"Models: {machine_line(models)}.",
        "",
        f"Layer paths: {machine_line(paths)}.",
        "",
        "GPU figures come from `nox -s gpu` on a machine with a CUDA device (docs/performance-gpu.md"
        " and docs/performance-gpu-models.md, with the GPU named); this page is the CPU run."
        " Kernel-level timings of `fused_batch_norm` and its backward against"
        " PyTorch, JAX and TensorFlow are in [the kernel report](../benchmarks/results/kernels.md);"
        " the speed targets, the floors the accuracy contract allows and any slowdown since the"
        " previous saved run in [the targets report](../benchmarks/results/targets.md).",
        "",
        "## What a model costs",
        "",
        "Training step (forward, cross-entropy, backward, SGD) and inference of whole models on"
        " PyTorch, every `torch.nn.BatchNorm*d` replaced by `bn_portable.torch.BatchNorm` (`from_torch`:"
        " the fused path; the same state on the default non-fused path), against the unchanged model."
        " ResNet-18: width 32, 32×32 images, batch 32; MLP: 4 × 512, batch 256. Compiled: the model"
        " under `torch.compile`, compile time not counted.",
        "",
        *model_table(models),
        "",
        "JAX under `jit`, against `flax.nnx.BatchNorm` with the same statistics convention (decay"
        " 0.99 as Flax's momentum, ε = 1e-5, two-pass variance: `use_fast_variance=False`) = 1.00×;"
        " the last column is Flax's default one-pass E[x²] − E[x]², quicker and less accurate when"
        " the mean is large against the spread.",
        "",
        *jax_table(models),
        "",
        "## Which path and layout to pick",
        "",
        *advice(models, paths),
        "",
        f"## Every path at {LARGE}",
        "",
        "`batch_norm(..., scale=True)` on each path, against `torch.nn.functional.batch_norm` on"
        " the same data, in the same memory layout (channels-last for NHWC) and dtype. renorm and"
        " weighted layers infer as the non-fused and zero-debias ones.",
        "",
        "### PyTorch backend",
        "",
        *path_table(paths, "torch", ("float32", "float16", "bfloat16")),
        "",
        "### NumPy backend",
        "",
        *path_table(paths, "numpy", ("float32", "float16")),
        "",
        "### NumPy peak memory (output included, over the input's bytes)",
        "",
        *memory_table(paths),
        "",
        "## Small batches (PyTorch, float32)",
        "",
        "`step` is the forward and backward with autograd. MLP batches (N×C) are channels-last.",
        "",
        *small_table(paths),
        "",
    ]
    return "\n".join(lines)


def render_models(models: Run) -> str:
    """The model table alone, for a run on another device (``nox -s gpu``)."""
    lines = [
        f"# Whole models on {models.machine.get('gpu') or models.payload.get('device')}",
        "",
        "Generated by `benchmarks/page.py --models-only` from the run of `benchmarks/models.py"
        f" --device {models.payload.get('device')}`; ratios to the unchanged model from the same"
        " interleaved rounds (see docs/performance.md for the cases).",
        "",
        f"{machine_line(models)}.",
        "",
        *model_table(models),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=RESULTS / "models.json")
    parser.add_argument("--paths", type=Path, default=RESULTS / "layer_paths.json")
    parser.add_argument("--out", type=Path, default=DOCS / "performance.md")
    parser.add_argument("--models-only", action="store_true", help="the model table alone")
    args = parser.parse_args(argv)
    if args.models_only:
        args.out.write_text(render_models(Run(args.models)))
    else:
        args.out.write_text(render(Run(args.models), Run(args.paths)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

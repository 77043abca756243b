"""The kernel benchmark's PNG plots and its terminal summary, drawn from the saved JSON.

They read only the payload ``bench.py`` writes, so the figures can change
without touching the measurement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _kernel_cases import DTYPES, LAYOUTS, OPERATIONS, REFERENCE, TARGET_SHAPE

PLOTTED = [
    "numpy fast",
    "numpy fast 1t",
    "numpy generic",
    "numpy naive",
    "torch fast",
    "torch native 1t",
    "jax fast",
    "jax naive",
    "tensorflow",
    "memory roof",
]


def plot(payload: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    operations = sorted({c["operation"] for c in payload["cases"]}, key=OPERATIONS.index)
    for operation in operations:
        figure, panels = plt.subplots(2, 2, figsize=(13, 8), sharey=True)
        for row, dtype in enumerate(DTYPES):
            for column, layout in enumerate(LAYOUTS):
                axis = panels[row][column]
                cases = [
                    c
                    for c in payload["cases"]
                    if c["operation"] == operation and c["dtype"] == dtype and c["layout"] == layout
                ]
                names = [
                    n
                    for n in PLOTTED
                    if any("ratio_vs_torch_native" in c["results"].get(n, {}) for c in cases)
                ]
                width = 0.8 / max(1, len(names))
                for index, name in enumerate(names):
                    ratios = [
                        c["results"].get(name, {}).get("ratio_vs_torch_native", np.nan)
                        for c in cases
                    ]
                    positions = np.arange(len(cases)) + index * width
                    axis.bar(positions, ratios, width, label=name)
                axis.axhline(1.0, color="black", linewidth=0.8)
                axis.set_yscale("log")
                axis.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
                axis.set_xticklabels([c["shape_name"] for c in cases], fontsize=8)
                axis.set_title(f"{operation} · {layout} · {dtype}", fontsize=10)
                if column == 0:
                    axis.set_ylabel("time / torch native (log)")
        handles, labels = panels[0][0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8)
        figure.suptitle(
            f"{payload['machine']['cpu_model']}, {payload['machine']['cpu_cores']} CPU cores — "
            "median time relative to PyTorch's native kernel (lower is faster)",
            fontsize=10,
            y=0.02,
        )
        figure.tight_layout(rect=(0, 0.04, 1, 0.94))
        path = out.with_name(f"{out.stem}_{operation}.png")
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    # Peak memory of the training forward.
    cases = [c for c in payload["cases"] if "peak_extra_memory_vs_input" in c]
    if cases:
        figure, axis = plt.subplots(figsize=(12, 5))
        names = ["numpy fast", "numpy generic", "numpy naive"]
        width = 0.8 / len(names)
        labels = [f"{c['shape_name']} {c['layout']} {c['dtype']}" for c in cases]
        for index, name in enumerate(names):
            values = [c["peak_extra_memory_vs_input"].get(name, np.nan) for c in cases]
            axis.bar(np.arange(len(cases)) + index * width, values, width, label=name)
        axis.axhline(1.25, color="black", linewidth=0.8, linestyle="--", label="target 1.25×")
        axis.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
        axis.set_xticklabels(labels, fontsize=7, rotation=60, ha="right")
        axis.set_ylabel("peak extra memory / input bytes")
        axis.set_title("NumPy training forward: peak extra memory (output included)", fontsize=10)
        axis.legend(fontsize=8)
        figure.tight_layout()
        path = out.with_name(f"{out.stem}_memory.png")
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def summarise(payload: dict) -> None:
    print(f"\nmedian ms (ratio vs {REFERENCE}) at {TARGET_SHAPE}, float32:")
    for case in payload["cases"]:
        if case["shape_name"] != TARGET_SHAPE or case["dtype"] != "float32":
            continue
        cells = []
        for name, result in case["results"].items():
            if "median_ms" in result:
                ratio = result.get("ratio_vs_torch_native")
                cells.append(
                    f"{name} {result['median_ms']:.2f}" + (f" ({ratio:.2f}x)" if ratio else "")
                )
        print(f"  {case['operation']:8s} {case['layout']}: " + "; ".join(cells))
    for note in payload["notes"]:
        print("note:", note)
    for name, reason in payload["absent"].items():
        print(f"{name}: {reason}")

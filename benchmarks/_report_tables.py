"""The kernel report's tables: the machine, the targets, one table per operation, memory.

Each function renders one Markdown table (or list) of ``report.py``'s page
from a saved run, and the targets the tables judge are listed beside them; the
prose around the tables is in ``report.py`` and ``_report_notes.py``.
"""

from __future__ import annotations

from _report_cells import _find, _fmt_ms, _fmt_ratio, _median, _ratio

COLUMNS = [
    ("numpy fast", "NumPy fast"),
    ("numpy fast 1t", "NumPy fast, 1 thread"),
    ("numpy generic", "NumPy generic"),
    ("numpy naive", "NumPy naive"),
    ("torch fast", "torch fast"),
    ("torch native 1t", "torch native, 1 thread"),
    ("torch compiled", "torch fast, compiled"),
    ("torch native compiled", "torch native, compiled"),
    ("jax fast", "JAX fast (jit)"),
    ("jax naive", "JAX naive (jit)"),
    ("tensorflow", "TensorFlow"),
    ("memory roof", "copy roof"),
]

#: (label, operation, implementation, reference implementation, limit)
TARGETS = [
    (
        "NumPy training forward ≤ 1.5× torch native (aim 1.0×)",
        "train",
        "numpy fast",
        "torch native",
        1.5,
    ),
    ("NumPy inference forward ≤ 1.2× torch native", "infer", "numpy fast", "torch native", 1.2),
    ("torch-backend training forward ≤ 1.05× native", "train", "torch fast", "torch native", 1.05),
    ("torch-backend inference forward ≤ 1.05× native", "infer", "torch fast", "torch native", 1.05),
    ("JAX jit ≤ naive jnp composite under jit (training)", "train", "jax fast", "jax naive", 1.0),
    ("JAX jit ≤ naive jnp composite under jit (inference)", "infer", "jax fast", "jax naive", 1.0),
]


def machine_section(payload: dict) -> str:
    m = payload["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v != "not installed")
    absent = "; ".join(f"{k}: {v}" for k, v in payload.get("absent", {}).items()) or "none"
    env = ", ".join(f"{k}={v}" for k, v in m.get("openblas_env", {}).items() if v) or "not set"
    lines = [
        f"- CPU: {m['cpu_model']}, {m['cpu_cores']} CPU cores ({m['machine']}, {m['system']}), "
        f"a shared virtual machine; PyTorch used {m['torch_threads']} threads, bn_portable's"
        f" NumPy fast paths {m.get('bn_portable_threads', 1)}.",
        f"- Date (UTC): {m['date_utc']}; load average at start {m.get('load_average_start')}, "
        f"at end {m.get('load_average_end')}.",
        f"- Python {m['python']}; {versions}.",
        f"- OpenBLAS environment: {env}.",
        f"- Not measured: {absent}.",
        f"- {payload['rounds']} interleaved rounds per case after {payload['warmup']} warm-up"
        " calls; in each round one untimed call, then the quickest of"
        f" {payload.get('calls_per_round', 1)}"
        " timed calls is the round's sample; medians over rounds.",
    ]
    lines += [f"- Note: {note}" for note in payload.get("notes", [])]
    return "\n".join(lines)


def targets_section(payload: dict) -> str:
    shape = payload["target_shape"]
    rows = [
        "| target | NCHW | NHWC | met | NCHW, both on 1 thread | NHWC, both on 1 thread |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, operation, name, reference, limit in TARGETS:
        cases = [_find(payload, operation, shape, layout, "float32") for layout in ("NCHW", "NHWC")]
        ratios = [_ratio(case, name, reference) for case in cases]
        one_thread = (
            [_ratio(case, f"{name} 1t", "torch native 1t") for case in cases]
            if name.startswith("numpy")
            else [None, None]
        )
        known = [r for r in ratios if r is not None]
        met = "—" if not known else ("yes" if all(r <= limit for r in known) else "no")
        rows.append(
            f"| {label} | {_fmt_ratio(ratios[0])} | {_fmt_ratio(ratios[1])} | {met} | "
            f"{_fmt_ratio(one_thread[0])} | {_fmt_ratio(one_thread[1])} |"
        )
    memory = [
        (_find(payload, "train", shape, layout, "float32") or {})
        .get("peak_extra_memory_vs_input", {})
        .get("numpy fast")
        for layout in ("NCHW", "NHWC")
    ]
    known = [v for v in memory if v is not None]
    met = "—" if not known else ("yes" if all(v <= 1.25 for v in known) else "no")
    rows.append(
        "| NumPy training forward peak extra memory ≤ 1.25× input (output included) | "
        + " | ".join("—" if v is None else f"{v:.3f}×" for v in memory)
        + f" | {met} | | |"
    )
    return "\n".join(rows)


def operation_table(payload: dict, operation: str) -> str:
    present = [
        (key, label)
        for key, label in COLUMNS
        if any(
            "median_ms" in c["results"].get(key, {})
            for c in payload["cases"]
            if c["operation"] == operation
        )
    ]
    header = (
        "| shape | layout | dtype | torch native ms | "
        + " | ".join(label for _, label in present)
        + " |"
    )
    rows = [header, "| " + " | ".join(["---"] * (4 + len(present))) + " |"]
    for case in payload["cases"]:
        if case["operation"] != operation:
            continue
        reference = _median(case, "torch native")
        cells = [case["shape_name"], case["layout"], case["dtype"], _fmt_ms(reference)]
        for key, _ in present:
            result = case["results"].get(key, {})
            cells.append(
                _fmt_ratio(result.get("ratio_vs_torch_native")) if "median_ms" in result else "—"
            )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def memory_table(payload: dict) -> str:
    rows = [
        "| shape | layout | dtype | input MiB | NumPy fast | NumPy generic | NumPy naive |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in payload["cases"]:
        memory = case.get("peak_extra_memory_vs_input")
        if not memory:
            continue
        rows.append(
            f"| {case['shape_name']} | {case['layout']} | {case['dtype']} | "
            f"{case['input_bytes'] / 2**20:.2f} | "
            + " | ".join(
                "—" if memory.get(k) is None else f"{memory[k]:.2f}×"
                for k in ("numpy fast", "numpy generic", "numpy naive")
            )
            + " |"
        )
    return "\n".join(rows)


#: (label, operation, shape, layout, implementation, reference, ratio limit, µs allowance)
SMALL_TARGETS = [
    ("torch training forward, 256×512", "train", "256x512", "NHWC",
     "torch fast", "torch native", 1.5, 8),
    ("torch inference forward, 256×512", "infer", "256x512", "NHWC",
     "torch fast", "torch native", 1.5, 8),
    ("torch training step, 256×512", "step", "256x512", "NHWC",
     "torch fast", "torch native", 1.3, 0),
    ("torch training forward, 8×32×16×16", "train", "8x32x16x16", "NCHW",
     "torch fast", "torch native", 1.5, 8),
    ("torch inference forward, 8×32×16×16", "infer", "8x32x16x16", "NCHW",
     "torch fast", "torch native", 1.5, 8),
    ("torch training step, 8×32×16×16", "step", "8x32x16x16", "NCHW",
     "torch fast", "torch native", 1.3, 0),
    ("torch training forward, 64×64", "train", "64x64", "NHWC",
     "torch fast", "torch native", 2.5, 0),
    ("torch inference forward, 64×64", "infer", "64x64", "NHWC",
     "torch fast", "torch native", 2.5, 0),
    ("torch training step, 64×64", "step", "64x64", "NHWC", "torch fast", "torch native", 2.5, 0),
    # NumPy: the public call at most 15 µs above its own kernels called directly.
    *[
        (f"NumPy {name} forward, {label}", operation, shape, layout, "numpy fast",
         "numpy kernels", 1.0, 15)
        for operation, name in (("train", "training"), ("infer", "inference"))
        for label, shape, layout in (
            ("64×64", "64x64", "NHWC"),
            ("256×512", "256x512", "NHWC"),
            ("128×1024", "128x1024", "NHWC"),
            ("8×32×16×16", "8x32x16x16", "NCHW"),
            ("32×64×56×56", "32x64x56x56", "NCHW"),
        )
    ],
    *[
        (f"compiled training step, {label}", "step", shape, layout, "torch compiled",
         "torch native compiled", 1.2, 0)
        for label, shape, layout in (
            ("64×64", "64x64", "NHWC"),
            ("256×512", "256x512", "NHWC"),
            ("8×32×16×16", "8x32x16x16", "NCHW"),
            ("32×64×56×56", "32x64x56x56", "NCHW"),
        )
    ],
]


def small_targets_section(payload: dict) -> str:
    """The per-call targets at small sizes: ratio, time, limit (ratio or native + allowance)."""
    rows = [
        "| target (float32) | ratio | time | reference time | limit | met |"
        " ratio to native on 1 thread |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, operation, shape, layout, name, reference, limit, allowance_us in SMALL_TARGETS:
        case = _find(payload, operation, shape, layout, "float32")
        value = None if case is None else _median(case, name)
        base = None if case is None else _median(case, reference)
        if value is None or base is None:
            rows.append(f"| {label} | — | — | — | ≤ {limit}× | not measured | — |")
            continue
        one_thread = _median(case, "torch native 1t") if reference == "torch native" else None
        bound = max(limit * base, base + allowance_us / 1e3)
        if limit == 1.0:  # an allowance alone: at most that much above the reference
            limit_text = f"≤ +{allowance_us} µs"
        else:
            limit_text = f"≤ {limit}×" + (f" or +{allowance_us} µs" if allowance_us else "")
        rows.append(
            f"| {label} (vs {reference}) | {value / base:.2f}× | {value * 1e3:.1f} µs |"
            f" {base * 1e3:.1f} µs |"
            f" {limit_text} | {'yes' if value <= bound else 'no'} |"
            f" {_fmt_ratio(value / one_thread) if one_thread else '—'} |"
        )
    return "\n".join(rows)


def tensorflow_section(payload: dict, json_name: str) -> str:
    """TensorFlow's fused op from a run made in TensorFlow's environment (NumPy < 2)."""
    m = payload["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v != "not installed")
    parts = [
        "## TensorFlow's fused op",
        "",
        "TensorFlow 2.15 needs NumPy < 2, so its fused op (`FusedBatchNormV3` /"
        " `FusedBatchNormGradV3` under `tf.function`, TensorFlow's default CPU"
        " settings) is timed in a run of its own, in an environment with"
        f" {versions} (`nox -s bench_tensorflow`, saved as"
        f" `benchmarks/results/{json_name}`, {m['date_utc']}). Every ratio below"
        " comes from that run's interleaved rounds: TensorFlow against PyTorch's"
        " native kernel, and bn_portable's NumPy and PyTorch fast paths against"
        " TensorFlow. float32; lower is faster.",
        "",
        "| operation | shape | layout | TensorFlow ms | TensorFlow / torch native |"
        " NumPy fast / TensorFlow | torch fast / TensorFlow |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in payload["cases"]:
        if case["dtype"] != "float32" or "median_ms" not in case["results"].get("tensorflow", {}):
            continue
        tf_ms = _median(case, "tensorflow")
        parts.append(
            f"| {case['operation']} | {case['shape_name']} | {case['layout']} | {_fmt_ms(tf_ms)} |"
            f" {_fmt_ratio(_ratio(case, 'tensorflow', 'torch native'))} |"
            f" {_fmt_ratio(_ratio(case, 'numpy fast', 'tensorflow'))} |"
            f" {_fmt_ratio(_ratio(case, 'torch fast', 'tensorflow'))} |"
        )
    return "\n".join(parts) + "\n"

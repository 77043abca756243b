"""What every benchmark harness shares: the machine's description and the timing loop.

``time_case`` interleaves the implementations of one case round by round, so
that load from other processes slows them alike; its summary is the median
over rounds, with the minor page faults per call where the system counts them.
``time_in_passes`` times a harness's cases in several passes over all of them,
so that each case's ratios come from several states of a shared machine.
``peak_extra_memory`` is the peak of Python-visible allocations (NumPy's
included) during one call, over the input's bytes.
"""

from __future__ import annotations

import datetime
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import resource  # POSIX: the process's page-fault counts
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]


def optional(module: str) -> tuple[Any, str | None]:
    try:
        return importlib.import_module(module), None
    except Exception as error:  # ImportError, or a broken install
        return None, f"not installed ({type(error).__name__})"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _bn_portable_threads() -> int:
    from bn_portable._native import _threads

    return _threads.thread_count()


def machine_info(torch: Any) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": cores,
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "bn_portable_threads": _bn_portable_threads(),
        "openblas_env": {
            name: os.environ.get(name) for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
        },
        "versions": {
            name: _version(name)
            for name in (
                "bn_portable",
                "numpy",
                "torch",
                "jax",
                "jaxlib",
                "tensorflow",
                "tensorflow-cpu",
            )
        },
        "load_average_start": load_average(),
    }


def time_case(
    impls: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int,
    rng: random.Random,
    after_round: Callable[[], None],
    settle: float = 0.0,
    inner: int = 3,
) -> dict[str, dict[str, Any]]:
    """Interleaved rounds; each round times every implementation, in a shuffled order.

    A round's sample of one implementation is the quickest of ``inner``
    back-to-back calls (a transient hiccup inside one call, another process
    taking the second core for a time slice, is dropped); the summary is the
    median over rounds.

    Each timed call is preceded by one untimed call of the same implementation:
    on a machine with few cores, the worker threads of the previous library
    (OpenBLAS, OpenMP, XLA) keep spinning for a while after its call and would
    otherwise be charged to whichever implementation comes next. ``settle``
    seconds of sleep before that untimed call let them go idle altogether
    (OpenBLAS's workers keep polling for about 0.1 s after each call), but
    on a virtual machine the idle cores then sleep too and every parallel
    region of a multi-threaded kernel pays to wake them (PyTorch's two-thread
    inference measured 3–4× slower that way), so it is off by default.

    ``minor_faults``: the median over rounds of the minor page faults per timed
    call (the whole process's, where the system counts them). Fresh memory costs a
    fault per 4 KB page, a microsecond or more each, and glibc hands large freed
    blocks back to the system, to map them afresh later, or not, depending on
    what else was freed: on 2 CPU cores one ResNet-18 training step of the same
    code took 12,000 faults and 114 ms in one repetition of ten steps, 500 and
    96 ms in the next. The count says when a ratio moved for that reason.
    """
    return _summary(*_rounds(impls, rounds, warmup, rng, after_round, settle, inner))


def _rounds(
    impls: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int,
    rng: random.Random,
    after_round: Callable[[], None],
    settle: float,
    inner: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, str]]:
    """``time_case``'s rounds: each implementation's samples (seconds), page faults per
    call, and the errors of those that failed."""
    samples: dict[str, list[float]] = {name: [] for name in impls}
    faults: dict[str, list[float]] = {name: [] for name in impls}
    errors: dict[str, str] = {}
    for name, call in impls.items():
        try:
            for _ in range(warmup):
                call()
        except Exception as error:  # an implementation that fails is recorded, not fatal
            errors[name] = f"{type(error).__name__}: {error}"[:300]
    live = [name for name in impls if name not in errors]
    for _ in range(rounds):
        rng.shuffle(live)
        for name in live:
            if settle:
                time.sleep(settle)
            impls[name]()
            best = math.inf
            faults_before = minor_faults()
            for _ in range(inner):
                start = time.perf_counter()
                impls[name]()
                best = min(best, time.perf_counter() - start)
            samples[name].append(best)
            faults_after = minor_faults()
            if faults_before is not None and faults_after is not None:
                faults[name].append((faults_after - faults_before) / inner)
        after_round()
    return samples, faults, errors


def _summary(
    samples: dict[str, list[float]], faults: dict[str, list[float]], errors: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Median, quartiles and quickest of each implementation's samples, its median page
    faults per call where counted, or its error."""
    results: dict[str, dict[str, Any]] = {}
    for name, unsorted in samples.items():
        if name in errors:
            results[name] = {"error": errors[name]}
            continue
        values = sorted(unsorted)
        quartiles = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
        results[name] = {
            "median_ms": statistics.median(values) * 1e3,
            "q1_ms": quartiles[0] * 1e3,
            "q3_ms": quartiles[2] * 1e3,
            "min_ms": values[0] * 1e3,
            "rounds": len(values),
        }
        if faults[name]:
            results[name]["minor_faults"] = statistics.median(faults[name])
    return results


#: One case of a harness: its key, the name of its reference variant, and a function that
#: builds its variants (the calls ``time_case`` takes).
Case = tuple[str, str, Callable[[], dict[str, Callable[[], Any]]]]


def time_in_passes(
    cases: list[Case],
    passes: int,
    rounds: int,
    warmup: int,
    rng: random.Random,
    *,
    keep_built: bool = False,
    progress: Callable[[str], None] = lambda key: None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each case's results (``time_case``'s, with ``ratio``), from ``passes`` passes over all
    the cases, each pass visiting them in a new shuffled order for ``rounds`` interleaved rounds.

    On a shared machine the state a case meets (other load, how much memory the
    allocator handed back) changes over minutes, and it does not slow every variant
    alike: two runs of the same code minutes apart on 2 CPU cores moved 48 of 188
    layer-path ratios by more than 20 %, in both directions, when each case was timed
    in one stretch of 21 rounds; two runs of three passes of 7 rounds moved 26. Here
    each variant's ``ratio`` is the median of its ratios of the passes (each from
    rounds that shared one state), ``pass_ratios`` lists them, and the times and page
    faults summarize every round of every pass. The cases' calls are built anew for
    each pass unless ``keep_built`` (compiled models: built once).
    """
    built: dict[str, dict[str, Callable[[], Any]]] = {}
    pooled: dict[str, tuple[dict[str, list[float]], dict[str, list[float]], dict[str, str]]] = {}
    ratios: dict[str, dict[str, list[float]]] = {key: {} for key, _, _ in cases}
    order = list(cases)
    for _ in range(passes):
        rng.shuffle(order)
        for key, reference, build in order:
            progress(key)
            calls = built[key] if key in built else build()
            if keep_built:
                built[key] = calls
            samples, faults, errors = _rounds(calls, rounds, warmup, rng, lambda: None, 0.0, 3)
            del calls
            for name, ratio in _ratios(_summary(samples, faults, errors), reference).items():
                ratios[key].setdefault(name, []).append(ratio)
            all_samples, all_faults, all_errors = pooled.setdefault(key, ({}, {}, {}))
            for name in samples:
                all_samples.setdefault(name, []).extend(samples[name])
                all_faults.setdefault(name, []).extend(faults[name])
            all_errors.update(errors)
    merged = {}
    for key, (samples, faults, errors) in pooled.items():
        results = _summary(samples, faults, errors)
        for name, per_pass in ratios[key].items():
            if name in results and "error" not in results[name]:
                results[name]["ratio"] = statistics.median(per_pass)
                results[name]["pass_ratios"] = per_pass
        merged[key] = results
    return {key: merged[key] for key, _, _ in cases}


def _ratios(results: dict[str, dict[str, Any]], reference: str) -> dict[str, float]:
    """Each timed result's median over the reference's."""
    base = results.get(reference, {}).get("median_ms")
    if not base:
        return {}
    return {name: result["median_ms"] / base for name, result in results.items() if "median_ms" in result}


def minor_faults() -> int | None:
    """The minor page faults of this process so far, or None where the system has no count."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_extra_memory(call: Callable[[], Any], input_bytes: int) -> float:
    """Peak bytes allocated during one call (output included), over the input's bytes."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = call()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    del result
    return peak / input_bytes


#: A case is flagged when its ratio grew by more than this factor since the previous run.
REGRESSION = 1.25


def regressions(previous: dict[str, Any] | None, payload: dict[str, Any]) -> list[str]:
    """Each implementation whose ratio to the case's reference grew by more than 25 %.

    Ratios, not times: the machines are shared and absolute times move by tens of
    percent from run to run, while a ratio from interleaved rounds moves far less.
    Each flag also gives both medians then and now (and the page faults per call
    where counted): a ratio grows when the implementation slowed down or when the
    reference sped up, and only the first is a regression (``compare_versions.py``
    settles it). Both payloads list ``cases`` with a ``key``, a ``reference`` and
    ``results[name]["ratio"]``.
    """
    if not previous:
        return []
    before = {case["key"]: case["results"] for case in previous.get("cases", []) if "key" in case}
    flagged = []
    for case in payload["cases"]:
        old_results = before.get(case["key"], {})
        reference = case.get("reference", "native")
        for name, result in case["results"].items():
            old = old_results.get(name, {}).get("ratio")
            new = result.get("ratio")
            if old and new and new > old * REGRESSION:
                medians = "; ".join(
                    f"{label} {_ms(case['results'].get(label))} (was {_ms(old_results.get(label))})"
                    for label in (name, reference)
                )
                flagged.append(f"{case['key']} {name}: {new:.2f}× (previous run {old:.2f}×; {medians})")
    return flagged


def _ms(result: dict[str, Any] | None) -> str:
    """A result's median time, with its page faults per call where they were counted."""
    value = (result or {}).get("median_ms")
    faults = (result or {}).get("minor_faults")
    if value is None:
        return "–"
    return f"{value:.2f} ms" if faults is None else f"{value:.2f} ms, {faults:,.0f} page faults"


def save_run(out: Path, payload: dict[str, Any], *, compare: bool) -> None:
    """Write a run's JSON, its ``regressions`` against the run saved there before (unless
    ``compare`` is false), and print every case's ratios."""
    previous = json.loads(out.read_text()) if compare and out.exists() else None
    payload["regressions"] = regressions(previous, payload)
    # Ratios move with the processor too: the report says when the flags compare two.
    payload["previous_cpu_model"] = (previous or {}).get("machine", {}).get("cpu_model")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}")
    for case in payload["cases"]:
        ratios = ", ".join(
            f"{name} {result['ratio']:.2f}×"
            for name, result in case["results"].items()
            if "ratio" in result and name != case["reference"]
        )
        print(f"{case['key']}: {ratios}")
    for line in payload["regressions"]:
        print(f"slower than the previous run: {line}")

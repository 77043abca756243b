"""``python -m conformance.run``: every golden case on every backend present.

Prints the matrix (feature group × backend: passed/total and the worst error as
a fraction of its tolerance), writes ``docs/conformance.md`` and
``docs/conformance.json`` from the run, and exits non-zero on any failure,
printing for each failure a command that reproduces it.

Backends run in ``--jobs`` worker processes (default min(2, CPUs)), each
backend whole in one worker; the results do not depend on the number.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

from . import catalogue, conventions
from .backends import BACKENDS, by_name
from .report import render_markdown
from .runner import Goldens, reproduction, run_case

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.run", description=__doc__)
    parser.add_argument("--backend", action="append", help="run on this backend only (repeatable)")
    parser.add_argument("--case", help="run only the case with this exact id")
    parser.add_argument("--only", help="run only cases whose id contains this text")
    parser.add_argument("--verbose", action="store_true", help="print every comparison")
    parser.add_argument("--no-report", action="store_true", help="do not write docs/conformance.*")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "conformance.md")
    parser.add_argument(
        "--jobs", type=int, default=min(2, _usable_cpus()),
        help="worker processes, each running whole backends (default: min(2, CPUs)); "
        "1 runs in this process",
    )
    args = parser.parse_args(argv)

    cases = all_cases()
    if args.case:
        cases = [c for c in cases if c["id"] == args.case]
    if args.only:
        cases = [c for c in cases if args.only in c["id"]]
    if not cases:
        parser.error("no case matches")
    backends = [by_name(n) for n in args.backend] if args.backend else list(BACKENDS)
    manifest = Goldens().manifest()

    absent = {b.name: b.absent_reason() for b in backends}
    present = [b for b in backends if not absent[b.name]]
    for backend in backends:
        if absent[backend.name]:
            print(f"{backend.name}: skipped ({absent[backend.name]})", flush=True)
    ids = [c["id"] for c in cases]
    started = time.perf_counter()
    results = {}
    for name, (backend_outcomes, log) in _run_backends(present, ids, args.verbose, args.jobs):
        print(log, end="", flush=True)
        results[name] = backend_outcomes
    # Report order is the backends' order, whichever worker finished first.
    outcomes = [o for b in present for o in results[b.name]]

    matrix = _matrix(outcomes)
    print()
    print(_text_matrix(matrix, [b.name for b in backends if not absent[b.name]]))
    passed = sum(o.status == "pass" for o in outcomes)
    failed = sum(o.status == "fail" for o in outcomes)
    print(f"\nconformance: {passed} passed, {failed} failed, "
          f"{sum(o.status == 'n/a' for o in outcomes)} not applicable "
          f"({len(cases)} cases, {time.perf_counter() - started:.0f}s)")

    # The report describes a whole run: every case on every backend.
    if not args.no_report and not args.case and not args.only and not args.backend:
        report = {
            "golden_versions": manifest.get("versions", {}),
            "platform": {"python": platform.python_version(), "machine": platform.machine()},
            "library_versions": _library_versions(),
            "backends": {b.name: absent[b.name] or "ran" for b in backends},
            "matrix": matrix,
            "failures": [o.__dict__ for o in outcomes if o.status == "fail"],
            "against_truth": _against_truth(outcomes),
            "cases": len(cases),
        }
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.with_suffix(".json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        args.report.write_text(render_markdown(report))
        print(f"wrote {args.report.relative_to(ROOT)} and {args.report.with_suffix('.json').relative_to(ROOT)}")
    return 1 if failed else 0


#: Relative CPU time of each backend's column (measured: jax-jit traces and
#: compiles, jax differentiates every gradient case, Dask builds graphs). Only
#: the order matters: the longest columns start first, so that two workers
#: finish close together.
_EXPECTED_COST = {"jax-jit": 10, "jax": 6, "dask": 5, "torch": 3, "torch-generic": 3}


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_backends(backends, ids, verbose, jobs):
    """Yield ``(name, (outcomes, log))`` per backend as each finishes.

    With ``jobs > 1`` the backends run in that many worker processes (each
    backend whole, in one process, so the jit cache and imports are shared
    across its cases); the results are the same as in one process.
    """
    if jobs <= 1 or len(backends) <= 1:
        for backend in backends:
            yield backend.name, run_backend(backend.name, ids, verbose)
        return
    ordered = sorted(backends, key=lambda b: -_EXPECTED_COST.get(b.name, 1))
    context = multiprocessing.get_context("spawn")  # no threads or JAX state inherited
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {pool.submit(run_backend, b.name, ids, verbose): b.name for b in ordered}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()


def all_cases() -> list[dict]:
    """TensorFlow's cases, then every other framework's convention with goldens."""
    return catalogue.cases() + conventions.cases()


def run_backend(name: str, ids: list[str], verbose: bool) -> tuple[list, str]:
    """Every case in ``ids`` on one backend: the outcomes and the lines to print."""
    backend = by_name(name)
    wanted = set(ids)
    cases = [c for c in all_cases() if c["id"] in wanted]
    goldens = Goldens()
    log = io.StringIO()
    wall, cpu = time.perf_counter(), time.process_time()
    outcomes = []
    for case in cases:
        outcome = run_case(case, goldens.arrays(case), backend, goldens.meta(case))
        outcomes.append(outcome)
        if outcome.status == "fail" or verbose:
            print(f"[{outcome.status}] {backend.name} {case['id']} "
                  f"(worst {outcome.worst:.3g}× tolerance in {outcome.worst_output or '-'})", file=log)
            if outcome.detail:
                print(outcome.detail.rstrip(), file=log)
            if outcome.status == "fail":
                print(f"  reproduce: {reproduction(case, backend)}", file=log)
            if verbose:
                print(f"  case: {json.dumps(case, sort_keys=True)}", file=log)
    failed = sum(o.status == "fail" for o in outcomes)
    print(f"{backend.name}: {len(cases)} cases in {time.perf_counter() - wall:.1f}s "
          f"({time.process_time() - cpu:.1f}s CPU), {failed} failed", file=log)
    return outcomes, log.getvalue()


def _matrix(outcomes):
    cells = defaultdict(lambda: {"passed": 0, "failed": 0, "not_applicable": 0, "worst": 0.0})
    for o in outcomes:
        cell = cells[f"{o.group}\t{o.backend}"]
        key = {"pass": "passed", "fail": "failed", "n/a": "not_applicable"}[o.status]
        cell[key] += 1
        if o.status != "n/a":
            cell["worst"] = max(cell["worst"], o.worst)
    matrix: dict[str, dict[str, dict]] = defaultdict(dict)
    for key, cell in cells.items():
        group, backend = key.split("\t")
        matrix[group][backend] = cell
    return {group: dict(row) for group, row in sorted(matrix.items())}


def _against_truth(outcomes):
    """case id -> the outputs judged against TensorFlow's float64 truth, and why.

    Whether TensorFlow's result is off its truth does not depend on the
    backend, so one record per case (the union over backends) says it all.
    """
    notes: dict[str, set[str]] = defaultdict(set)
    for o in outcomes:
        notes[o.case_id].update(o.against_truth)
    return {case_id: sorted(found) for case_id, found in sorted(notes.items()) if found}


def _text_matrix(matrix, backends):
    width = max([len(g) for g in matrix] + [5])
    lines = [f"{'group':<{width}}  " + "  ".join(f"{b:>18}" for b in backends)]
    for group, row in matrix.items():
        cells = []
        for b in backends:
            cell = row.get(b)
            if cell is None or cell["passed"] + cell["failed"] == 0:
                cells.append(f"{'n/a':>18}")
                continue
            total = cell["passed"] + cell["failed"]
            cells.append(f"{cell['passed']:>4}/{total:<4} {cell['worst']:>7.3f}")
        lines.append(f"{group:<{width}}  " + "  ".join(f"{c:>18}" for c in cells))
    lines.append("(passed/total and the worst error as a fraction of its tolerance; ≤ 1 passes)")
    return "\n".join(lines)


def _library_versions():
    import importlib.metadata as metadata

    versions = {}
    for package in ("bn_portable", "array-api-compat", "numpy", "torch", "jax", "dask", "array-api-strict", "cupy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


if __name__ == "__main__":
    sys.exit(main())

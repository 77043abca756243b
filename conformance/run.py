"""``python -m conformance.run``: every golden case on every backend present.

Prints the matrix (feature group × backend: passed/total and the worst error as
a fraction of its tolerance), writes ``docs/conformance.md`` and
``docs/conformance.json`` from the run, and exits non-zero on any failure,
printing for each failure a command that reproduces it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

from . import catalogue
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
    args = parser.parse_args(argv)

    cases = catalogue.cases()
    if args.case:
        cases = [c for c in cases if c["id"] == args.case]
    if args.only:
        cases = [c for c in cases if args.only in c["id"]]
    if not cases:
        parser.error("no case matches")
    backends = [by_name(n) for n in args.backend] if args.backend else list(BACKENDS)
    goldens = Goldens()
    manifest = goldens.manifest()

    absent = {b.name: b.absent_reason() for b in backends}
    outcomes = []
    started = time.perf_counter()
    for backend in backends:
        if absent[backend.name]:
            print(f"{backend.name}: skipped ({absent[backend.name]})", flush=True)
            continue
        backend_started = time.perf_counter()
        for case in cases:
            outcome = run_case(case, goldens.arrays(case), backend, goldens.meta(case))
            outcomes.append(outcome)
            if outcome.status == "fail" or args.verbose:
                print(f"[{outcome.status}] {backend.name} {case['id']} "
                      f"(worst {outcome.worst:.3g}× tolerance in {outcome.worst_output or '-'})")
                if outcome.detail:
                    print(outcome.detail.rstrip())
                if outcome.status == "fail":
                    print(f"  reproduce: {reproduction(case, backend)}")
                if args.verbose:
                    print(f"  case: {json.dumps(case, sort_keys=True)}")
        seconds = time.perf_counter() - backend_started
        failed = sum(o.status == "fail" for o in outcomes if o.backend == backend.name)
        print(f"{backend.name}: {len(cases)} cases in {seconds:.1f}s, {failed} failed", flush=True)

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

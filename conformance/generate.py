"""TensorFlow golden-output generator for the bn_portable conformance suite.

Run from the repository root with the TensorFlow environment::

    python -m conformance.generate [--out DIR] [--check] [--only SUBSTRING] [--jobs N]

Every case of ``conformance.catalogue`` is run in a fresh ``tf.Graph`` and
``tf.compat.v1.Session`` (graph mode, one intra-op and one inter-op thread,
``TF_ENABLE_ONEDNN_OPTS=0``), its inputs generated with numpy from the case's
seed and fed through placeholders.  Inputs and outputs go to
``<out>/<op>.npz`` under the keys ``"<case id>|<array name>"``; everything
else (versions, settings, hashes, what TF did) goes to ``<out>/manifest.json``.
``--check`` regenerates into a temporary folder and compares: every array must be
bit-identical, except that a floating array may differ by at most
``PROCESSOR_ULPS`` epsilons of its largest magnitude, or a normalized output
as many in the conformance suite's measure (see ``close_across_processors``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from conformance import catalogue
from conformance.compare import (
    PROCESSOR_ULPS,
    channel_axis,
    close_across_processors,
    difference_lines,
    source_name,
)
from conformance.golden_files import MANIFEST, load_goldens, write_goldens
from conformance.tf_cases import run_case
from conformance.tf_session import tf_modules

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
PROGRESS_EVERY = 50


def _worker_init():
    tf_modules()


def _run_all(cases, jobs):
    total = len(cases)
    start = time.perf_counter()
    results = []

    def progress(done, last=False):
        if done % PROGRESS_EVERY == 0 or last:
            print(f"[{done}/{total}] {time.perf_counter() - start:6.1f}s", flush=True)

    if jobs <= 1 or total < 2:
        for i, case in enumerate(cases, 1):
            results.append(run_case(case))
            progress(i, i == total)
        return results
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, initializer=_worker_init) as pool:
        for i, result in enumerate(pool.imap(run_case, cases, chunksize=4), 1):
            results.append(result)
            progress(i, i == total)
    return results


def _diff_json(a, b, path="", out=None, limit=50):
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                out.append(f"{sub}: only in regenerated")
            elif key not in b:
                out.append(f"{sub}: only in committed")
            else:
                _diff_json(a[key], b[key], sub, out, limit)
    elif a != b:
        out.append(f"{path}: committed {json.dumps(a)[:120]} != regenerated {json.dumps(b)[:120]}")
    return out


def _source_and_channel_axis(arrays: dict, key: str, cases: dict) -> tuple:
    """For ``<case>|…y``: the ``x`` it came from and where its channels are, as the runner pairs them."""
    case_id, name = key.split("|", 1)
    if not name.endswith("y") or case_id not in cases:
        return None, None
    return arrays.get(f"{case_id}|{source_name(name)}"), channel_axis(cases[case_id])


def check(committed_dir, fresh_dir, selected_ids, full) -> tuple[list, int, list]:
    """Differences between committed and regenerated goldens (only ``selected_ids``
    unless ``full``, where cases missing from the regeneration count too), the
    number of identical arrays, and the arrays within ``PROCESSOR_ULPS``."""
    problems, close = [], []
    old_manifest, old_arrays = load_goldens(committed_dir)
    new_manifest, new_arrays = load_goldens(fresh_dir)
    if old_manifest is None:
        return [f"no {MANIFEST} in {committed_dir}"], 0
    selected = set(selected_ids)
    for key in ("format_version", "generator", "versions", "settings", "storage"):
        problems += _diff_json(old_manifest.get(key), new_manifest.get(key), key)
    old_cases = {k: v for k, v in old_manifest.get("cases", {}).items() if k in selected}
    new_cases = {k: v for k, v in new_manifest.get("cases", {}).items() if k in selected}
    if full:
        old_cases = old_manifest.get("cases", {})
    case_problems = _diff_json(old_cases, new_cases, "cases", limit=10**6)
    identical = 0
    cases = {case["id"]: case for case in catalogue.cases()}
    for op in catalogue.OPS:
        old = {k: v for k, v in old_arrays[op].items() if full or k.split("|", 1)[0] in selected}
        new = new_arrays[op]
        for key in sorted(set(old) - set(new)):
            problems.append(f"{op}.npz: {key} only in committed goldens")
        for key in sorted(set(new) - set(old)):
            problems.append(f"{op}.npz: {key} only in regenerated goldens")
        for key in sorted(set(old) & set(new)):
            a, b = old[key], new[key]
            if a.dtype != b.dtype or a.shape != b.shape:
                problems.append(f"{op}.npz: {key}: {a.dtype}{a.shape} != {b.dtype}{b.shape}")
            elif a.tobytes() != b.tobytes() and (
                ulps := close_across_processors(a, b, *_source_and_channel_axis(old, key, cases))
            ) is not None:
                close.append((op, key, ulps))
            elif a.tobytes() != b.tobytes():
                rows_a = a.reshape(-1).view(np.uint8).reshape(a.size, -1)
                rows_b = b.reshape(-1).view(np.uint8).reshape(b.size, -1)
                bad = int(np.count_nonzero((rows_a != rows_b).any(axis=1)))
                problems.append(f"{op}.npz: {key}: {bad} of {a.size} element(s) differ")
            else:
                identical += 1
    # A close array's hash in the manifest differs too; that is the same difference.
    close_hashes = {
        "cases.{}.arrays.{}.sha256:".format(*key.split("|", 1)) for _, key, _ in close
    }
    problems += [line for line in case_problems if not line.startswith(tuple(close_hashes))][:50]
    return problems, identical, close


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="goldens folder (default: conformance/goldens)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary folder and compare with --out",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="SUBSTRING",
        help="only the cases whose id contains SUBSTRING",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default: min(2, CPUs)); results do not depend on it",
    )
    args = parser.parse_args(argv)

    all_cases = catalogue.cases()
    case_by_id = {case["id"]: case for case in all_cases}
    selected = [c for c in all_cases if args.only is None or args.only in c["id"]]
    if not selected:
        print(f"no case id contains {args.only!r}", file=sys.stderr)
        return 2
    print(f"{len(selected)} case(s), {args.jobs} job(s)", flush=True)
    start = time.perf_counter()
    results = _run_all(selected, args.jobs)
    elapsed = time.perf_counter() - start
    if not args.check:
        write_goldens(args.out, results, case_by_id, only=args.only)
        size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
        n_arrays = sum(len(r["arrays"]) for r in results)
        print(
            f"wrote {len(results)} cases, {n_arrays} arrays, {size / 1e6:.2f} MB to "
            f"{args.out} in {elapsed:.1f}s"
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="bn_goldens_") as fresh:
        write_goldens(fresh, results, case_by_id)
        problems, identical, close = check(
            args.out, fresh, [c["id"] for c in selected], full=args.only is None
        )
    if problems:
        print(f"golden check FAILED: {len(problems)} difference(s)")
        for line in problems[:200]:
            print(f"  - {line}")
        if len(problems) > 200:
            print(f"  ... and {len(problems) - 200} more")
    for op, key, ulps in close:
        print(*difference_lines(f"{op}.npz", [], [(key, ulps)]))
    within = f", {len(close)} within {PROCESSOR_ULPS} epsilons" if close else ""
    print(f"golden check: {len(selected)} cases, {identical} arrays identical{within} ({elapsed:.1f}s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

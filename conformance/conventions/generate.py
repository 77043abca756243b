"""``python -m conformance.conventions.generate FRAMEWORK [--check]``: the framework's goldens.

Runs in the framework's own environment (``nox -s "convention_goldens(framework=...)"``)
and writes ``conformance/goldens/conventions/<framework>.npz`` and ``.json``;
``--check`` regenerates into a temporary folder and fails unless every array is
identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from conformance.compare import difference_lines, source_name, stored_differences
from conformance.conventions import FRAMEWORKS, GOLDENS, module


def write(framework: str, out: Path) -> None:
    source = module(framework)
    arrays, records = {}, {}
    for case in source.CASES:
        produced = source.generate(case)
        records[case["id"]] = {"arrays": {name: {"dtype": _dtype(a)} for name, a in sorted(produced.items())}}
        arrays.update({f"{case['id']}|{name}": _storable(a) for name, a in produced.items()})
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / f"{framework}.npz", **arrays)
    manifest = {
        "generator": f"python -m conformance.conventions.generate {framework}",
        "versions": source.versions(),
        "cases": records,
    }
    (out / f"{framework}.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(records)} {framework} cases to {out}")


def _dtype(array: np.ndarray) -> str:
    name = str(array.dtype)
    return "bfloat16" if name == "bfloat16" else name


def _storable(array: np.ndarray) -> np.ndarray:
    """bfloat16 as float32 (NumPy's npz has no bfloat16); the manifest keeps the dtype."""
    return array.astype(np.float32) if str(array.dtype) == "bfloat16" else np.asarray(array)


def check(framework: str) -> None:
    """Regenerate into a temporary folder: every array identical, or within processor
    rounding (``compare.PROCESSOR_ULPS``; y also measured against its x, as the suite does)."""
    with tempfile.TemporaryDirectory() as fresh:
        write(framework, Path(fresh))
        with np.load(GOLDENS / f"{framework}.npz") as old, np.load(Path(fresh) / f"{framework}.npz") as new:
            committed = {k: old[k] for k in old.files}
            regenerated = {k: new[k] for k in new.files}

    def source_of(key: str) -> tuple[np.ndarray | None, None]:
        """A step's x for its y (the sensitivity taken over the whole array, not per channel)."""
        case_id, name = key.split("|", 1)
        return (committed.get(f"{case_id}|{source_name(name)}") if name.endswith("y") else None), None

    differ, close = stored_differences(committed, regenerated, source_of)
    for line in difference_lines(f"{framework}.npz", differ, close):
        print(line)
    if differ:
        sys.exit(f"{framework}: regenerated goldens differ beyond processor rounding")
    print(f"{framework}: regenerated goldens match array for array (or within processor rounding)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=FRAMEWORKS)
    parser.add_argument("--check", action="store_true")
    arguments = parser.parse_args(argv)
    if arguments.check:
        check(arguments.framework)
    else:
        write(arguments.framework, GOLDENS)


if __name__ == "__main__":
    main()

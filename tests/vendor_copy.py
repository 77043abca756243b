"""Vendor bn_portable into a fake library and run the unit tests against the copy.

``python tests/vendor_copy.py --array-api-compat DIR --dest DIR [--hook]`` builds::

    DEST/mylib/__init__.py
    DEST/mylib/_vendor/bn_portable/          a copy of src/bn_portable
    DEST/mylib/_vendor/array_api_compat/     without --hook: array-api-compat beside it
    DEST/mylib/_lib/array_api_compat/        with --hook: array-api-compat elsewhere, and
    DEST/mylib/_vendor/_array_api_compat_vendor.py   the hook that re-exports it

plus a copy of ``tests/`` and ``conformance/`` whose imports of ``bn_portable``
and ``array_api_compat`` point into ``mylib``, then runs pytest there. It
refuses to run when a top-level ``bn_portable`` or ``array_api_compat`` is
importable: the copy must work on its own (``nox -s vendoring``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
VENDOR = "mylib._vendor"

HOOK = '''"""mylib's array-api-compat, for the libraries vendored beside this module."""

from .._lib.array_api_compat import *  # noqa: F403
'''

#: Tests of the repository rather than of the library (its README, docs, src/
#: layout, benchmark harnesses, and docstring examples that import the installed
#: ``bn_portable``): they do not apply to a vendored copy.
REPOSITORY_TESTS = {
    "test_readme.py", "test_docs.py", "test_doctests.py", "test_vendoring.py", "vendor_copy.py",
    "test_benchmarks.py", "test_folding_benchmark.py",
}

_NAMES = re.compile(r"(?<![\w.])(bn_portable|array_api_compat)(?=[.\s,\"]|$)", re.MULTILINE)


def build(dest: Path, array_api_compat: Path, *, hook: bool) -> None:
    """The fake library and the rewritten tests under ``dest``."""
    vendor = dest / "mylib" / "_vendor"
    vendor.mkdir(parents=True)
    (dest / "mylib" / "__init__.py").write_text('"""A library that vendors bn_portable."""\n')
    (vendor / "__init__.py").write_text("")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "src" / "bn_portable", vendor / "bn_portable", ignore=ignore)
    if hook:
        lib = dest / "mylib" / "_lib"
        lib.mkdir()
        (lib / "__init__.py").write_text("")
        shutil.copytree(array_api_compat, lib / "array_api_compat", ignore=ignore)
        (vendor / "_array_api_compat_vendor.py").write_text(HOOK)
        compat = "mylib._lib.array_api_compat"
    else:
        shutil.copytree(array_api_compat, vendor / "array_api_compat", ignore=ignore)
        compat = f"{VENDOR}.array_api_compat"
    targets = {"bn_portable": f"{VENDOR}.bn_portable", "array_api_compat": compat}
    for folder in ("tests", "conformance", "conformance/conventions"):
        (dest / folder).mkdir()
        for source in (ROOT / folder).glob("*.py"):
            if source.name in REPOSITORY_TESTS:
                continue
            text = _NAMES.sub(lambda m: targets[m.group(1)], source.read_text())
            (dest / folder / source.name).write_text(text)
    (dest / "conformance" / "goldens").symlink_to(ROOT / "conformance" / "goldens")
    (dest / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    # The project's pytest settings, minus what refers to the repository's layout.
    (dest / "pytest.ini").write_text(
        "[pytest]\naddopts = -ra --strict-markers --strict-config -p no:cacheprovider\n"
        "testpaths = tests\npythonpath = .\nxfail_strict = true\nfilterwarnings = error\n"
        "markers =\n" + "".join(f"    {marker}\n" for marker in _markers())
    )


def _markers() -> list[str]:
    """The project's registered pytest markers (``--strict-markers`` needs them)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return pyproject["tool"]["pytest"]["ini_options"]["markers"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--array-api-compat", type=Path, required=True,
                        help="the array_api_compat package folder to vendor")
    parser.add_argument("--dest", type=Path, required=True, help="an empty or absent folder")
    parser.add_argument("--hook", action="store_true", help="vendor through _array_api_compat_vendor")
    parser.add_argument("--backend", action="append", dest="backends",
                        help="a test backend (repeatable; default numpy and torch)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest")
    args = parser.parse_args(argv)
    for name in ("bn_portable", "array_api_compat"):
        if importlib.util.find_spec(name) is not None:
            parser.error(f"a top-level {name} is importable: the vendored copy would not be tested alone")
    if args.dest.exists():
        shutil.rmtree(args.dest)
    build(args.dest, args.array_api_compat, hook=args.hook)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    backends = [f"--backend={name}" for name in args.backends or ("numpy", "torch")]
    command = [sys.executable, "-m", "pytest", *backends, *args.pytest_args]
    return subprocess.call(command, cwd=args.dest, env=env)


if __name__ == "__main__":
    sys.exit(main())

"""The ``Examples`` of every public name's docstring run, as doctests.

Collected from ``bn_portable.__all__`` rather than by importing every module,
so that modules for optional libraries are not imported where those are
absent; ``nox -s doctests`` runs this file on NumPy alone. The public modules
beside it (``porting``, ``torch``, ``flax``, ``conventions``, ``folding``) are collected from their own
``__all__`` where their library is installed (the NumPy test session has all).
"""

from __future__ import annotations

import doctest
import importlib
import os
from pathlib import Path

import pytest

import bn_portable as bn

PUBLIC = [getattr(bn, name) for name in bn.__all__ if name != "__version__"]


@pytest.mark.parametrize("public", PUBLIC, ids=lambda public: public.__name__)
def test_docstring_examples_run(public, capsys):
    found = doctest.DocTestFinder(recurse=False).find(public, public.__name__, globs={})
    examples = [test for test in found if test.examples]
    assert examples, f"{public.__name__}'s docstring has no Examples"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in examples:
        runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    report = capsys.readouterr().out
    assert attempted and failed == 0, report


ROOT = Path(__file__).resolve().parent.parent
#: Public modules beside the package's namespace, and the library each needs.
MODULES = {
    "porting": "h5py", "torch": "torch", "flax": "flax", "conventions": "numpy", "folding": "numpy",
}


def _run_examples(public, name: str) -> tuple[int, int]:
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(public, name, globs={}):
        if test.examples:
            runner.run(test)
    return runner.summarize(verbose=False)


@pytest.mark.parametrize("module", list(MODULES))
def test_public_modules_docstring_examples_run(module, capsys, monkeypatch):
    pytest.importorskip(MODULES[module], reason=f"bn_portable.{module}'s examples need {MODULES[module]}")
    public_module = importlib.import_module(f"{bn.__name__}.{module}")
    monkeypatch.chdir(ROOT)  # examples name the repository's test files by relative path
    attempted_total = 0
    for name in public_module.__all__:
        failed, attempted = _run_examples(getattr(public_module, name), name)
        attempted_total += attempted
        assert failed == 0, capsys.readouterr().out
    assert attempted_total, f"bn_portable.{module} has no Examples"
    assert os.getcwd() == str(ROOT)

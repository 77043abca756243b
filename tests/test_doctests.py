"""The ``Examples`` of every public name's docstring run, as doctests.

Collected from ``bn_portable.__all__`` rather than by importing every module,
so that modules for optional libraries are not imported where those are
absent; ``nox -s doctests`` runs this file on NumPy alone.
"""

from __future__ import annotations

import doctest

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

"""A vendored copy finds only the array-api-compat beside it, and names real libraries.

``nox -s vendoring`` runs the whole unit suite against vendored copies in an
environment without a global array-api-compat; these tests run in every session,
where one is installed, and check that a copy does not fall back to it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "bn_portable"


def _vendor(tmp_path: Path, hook: str | None) -> Path:
    vendor = tmp_path / "mylib" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "mylib" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    shutil.copytree(SOURCE, vendor / "bn_portable", ignore=shutil.ignore_patterns("__pycache__"))
    if hook is not None:
        (vendor / "_array_api_compat_vendor.py").write_text(hook)
    return tmp_path


def _run(root: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=root, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )


def test_a_vendored_copy_does_not_use_the_global_array_api_compat(tmp_path):
    pytest.importorskip("array_api_compat")  # the fallback this test rules out must exist
    root = _vendor(tmp_path, hook=None)
    result = _run(root, "import mylib._vendor.bn_portable")
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "mylib._vendor._array_api_compat_vendor" in result.stderr
    assert "does not use a globally installed one" in result.stderr


def test_messages_of_a_vendored_copy_name_the_array_libraries(tmp_path):
    pytest.importorskip("torch")
    # The hook may re-export any array-api-compat; here the installed one.
    root = _vendor(tmp_path, hook="from array_api_compat import *  # noqa: F403\n")
    result = _run(root, """
        import numpy as np, torch
        from mylib._vendor import bn_portable as bn
        try:
            bn.batch_normalization(np.ones((2, 3), np.float32), torch.zeros(3),
                                   np.ones(3, np.float32), None, None, 1e-3)
        except TypeError as error:
            print(error)
    """)
    assert result.returncode == 0, result.stderr
    assert "mean is a torch array but x is a numpy array" in result.stdout

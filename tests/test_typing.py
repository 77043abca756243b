"""A user's type checker sees that arrays come back as the type that went in.

mypy (``--strict``, with the repository's configuration) checks a small user
program: ``assert_type`` fails the check where bn_portable's annotations give
another type than the one asserted, and a call with a list instead of an array
must be reported. The lint session runs this file; elsewhere it is skipped
where mypy is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bn_portable

pytest.importorskip("mypy", reason="mypy is not installed (the lint session installs it)")

ROOT = Path(__file__).resolve().parents[1]

USER_PROGRAM = """
from typing import assert_type

import numpy as np
import numpy.typing as npt

import bn_portable as bn

Array = npt.NDArray[np.float32]
x: Array = np.ones((4, 1, 1, 3), np.float32)
ones: Array = np.ones(3, np.float32)

assert_type(bn.moments(x, [0, 1, 2]), tuple[Array, Array])
assert_type(bn.weighted_moments(x, [0, 1, 2], x), tuple[Array, Array])
assert_type(bn.batch_normalization(x, 0.0, 1.0, None, None, 1e-3), Array)
assert_type(bn.fused_batch_norm(x, ones, ones), tuple[Array, Array, Array])
assert_type(bn.fused_batch_norm_grad(x, x, ones, ones, ones), tuple[Array, Array, Array])

y, state = bn.batch_norm(x, scale=True)
assert_type(y, Array)
assert_type(state, bn.BatchNormState)
y, state, vjp = bn.batch_norm_vjp(x, scale=True)
assert_type(vjp(y), tuple[Array, Array | None, Array | None])

parts = bn.merge_moments(bn.partial_moments(x, [0, 1, 2]), bn.partial_moments(x, 0))
assert_type(parts, bn.PartialMoments)
assert_type(bn.recalibrate([x, x], state, scale=True), bn.BatchNormState)
"""

NOT_AN_ARRAY = """
import bn_portable as bn

bn.moments([1.0, 2.0], 0)
"""


def test_arrays_come_back_as_the_type_that_went_in(tmp_path: Path) -> None:
    (tmp_path / "user_program.py").write_text(textwrap.dedent(USER_PROGRAM))
    (tmp_path / "not_an_array.py").write_text(textwrap.dedent(NOT_AN_ARRAY))
    env = dict(os.environ)
    package_root = Path(bn_portable.__file__).resolve().parents[1]
    if package_root.name != "site-packages":  # run from a checkout: mypy needs the path
        env["MYPYPATH"] = str(package_root)
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict",
            "--config-file", str(ROOT / "pyproject.toml"),
            "--python-version", "3.11",  # typing.assert_type
            "--cache-dir", str(tmp_path / "mypy_cache"),
            "user_program.py", "not_an_array.py",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stdout + result.stderr
    assert errors[0].startswith("not_an_array.py:4:"), result.stdout
    assert 'Value of type variable "ArrayT" of "moments" cannot be "list[float]"' in errors[0]

"""Synchronized batch norm on two JAX CPU devices (shard_map with psum, and a sharded jit).

The checks run in a child process (``jax_devices.py``): the device count is an
XLA flag that must be set before JAX is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.scaleout
pytest.importorskip("jax")

HERE = Path(__file__).parent
TIMEOUT_S = 300


def test_two_devices() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), str(HERE), env.get("PYTHONPATH")]))
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, str(HERE / "jax_devices.py")],
        env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, f"the two-device run failed:\n{done.stdout}\n{done.stderr[-6000:]}"
    assert done.stdout.startswith("ok: 7 cases"), done.stdout

"""The folding harness runs on a tiny model (that it works, not what it measures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_folding_harness_measures_every_variant(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "folding.json"
    subprocess.run(
        [sys.executable, "folding.py", "--tiny", "--out", str(out)], cwd=BENCHMARKS, check=True, timeout=600
    )
    payload = json.loads(out.read_text())
    assert [case["dtype"] for case in payload["cases"]] == ["float32", "float16", "bfloat16"]
    for case in payload["cases"]:
        assert len(case["results"]) == 6
        assert all({"max_abs", "relative"} <= set(result) for result in case["results"].values())
    table = out.with_suffix(".md").read_text()
    assert "| float16 | bn_portable, at-risk kept |" in table
    assert "| bfloat16 | bn_portable, at-risk widened |" in table

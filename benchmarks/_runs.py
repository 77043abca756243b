"""Reading the saved runs of ``layer_paths.py`` and ``models.py`` (shared by the report and the page)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LARGE = "32x64x56x56"
#: The layer paths ``layer_paths.py`` times in training, and in inference (renorm and
#: weighted layers infer as the non-fused and zero-debias ones).
TRAINING_PATHS = ("fused", "non-fused", "renorm", "weighted", "zero-debias")
INFERENCE_PATHS = ("fused", "non-fused", "zero-debias")


class Run:
    """One saved run: its cases by key, ratios by (key, variant)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.payload: dict[str, Any] = json.loads(path.read_text())
        self.cases = {case["key"]: case for case in self.payload["cases"]}

    def ratio(self, key: str, variant: str) -> float | None:
        result = self.cases.get(key, {}).get("results", {}).get(variant, {})
        value = result.get("ratio")
        return float(value) if value is not None else None

    def median_ms(self, key: str, variant: str) -> float | None:
        value = self.cases.get(key, {}).get("results", {}).get(variant, {}).get("median_ms")
        return float(value) if value is not None else None

    def faults(self, key: str, variant: str) -> float | None:
        """Minor page faults per timed call (median over rounds), where the run counted them."""
        value = self.cases.get(key, {}).get("results", {}).get(variant, {}).get("minor_faults")
        return float(value) if value is not None else None

    def memory(self, key: str, variant: str) -> float | None:
        value = self.cases.get(key, {}).get("peak_memory_vs_input", {}).get(variant)
        return float(value) if value is not None else None

    @property
    def machine(self) -> dict[str, Any]:
        machine: dict[str, Any] = self.payload["machine"]
        return machine


def path_key(backend: str, layout: str, dtype: str, mode: str, shape: str = LARGE) -> str:
    """The key ``layer_paths.py`` gives a case."""
    return f"{backend}/{shape}/{layout}/{dtype}/{mode}"


def times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def machine_line(run: Run) -> str:
    m = run.machine
    versions = m.get("versions", {})
    named = ", ".join(f"{k} {v}" for k, v in versions.items() if v != "not installed")
    gpu = f"; GPU: {m['gpu']}" if m.get("gpu") else ""
    return (
        f"{m.get('cpu_model')}, {m.get('cpu_cores')} CPU cores{gpu}; PyTorch on "
        f"{m.get('torch_threads')} threads; {named}; {m.get('date_utc')}"
    )

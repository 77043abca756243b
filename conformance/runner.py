"""Run one golden case on one backend and compare every output with TensorFlow's.

A case is data (``conformance/catalogue.py``); its inputs and TensorFlow's
outputs are arrays in ``conformance/goldens/<op>.npz`` under keys
``"<case id>|<array name>"``. ``run_case`` feeds the inputs to bn_portable on a
backend, and returns one ``Outcome`` with the worst error over all outputs.
The runner of each op is in ``conformance/op_runners.py``.
"""

from __future__ import annotations

import json
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import conventions
from .backends import Backend
from .compare import channel_axis, error_in_epsilons, source_name, tolerance
from .op_runners import RUNNERS, autodiff_vjp, expected_name, layer_options

__all__ = [
    "GOLDENS",
    "TRUTH",
    "Goldens",
    "Outcome",
    "expected_name",
    "layer_options",
    "reproduction",
    "required_outputs",
    "run_case",
]

GOLDENS = Path(__file__).parent / "goldens"

#: Prefix of TensorFlow's float64 results for the same inputs (cases with ``truth``).
TRUTH = "truth/"


@dataclass
class Outcome:
    case_id: str
    group: str
    backend: str
    status: str  # "pass", "fail" or "n/a" (the backend cannot hold the dtype)
    worst: float = 0.0  # worst error / tolerance over every output (≤ 1 passes)
    worst_output: str = ""
    detail: str = ""
    checks: list[str] = field(default_factory=list)
    #: outputs judged against TensorFlow's float64 truth instead of its own result, and why
    against_truth: list[str] = field(default_factory=list)


class Goldens:
    """Lazy access to the golden arrays of each op."""

    def __init__(self, folder: Path = GOLDENS) -> None:
        self.folder = folder
        self._files: dict[str, Any] = {}
        self._cases: dict[str, Any] | None = None
        self._conventions: dict[str, Any] = {}

    def arrays(self, case: Mapping[str, Any]) -> dict[str, np.ndarray]:
        op = case["op"]
        if op not in self._files:
            self._files[op] = np.load(self.folder / f"{op}.npz")
        golden = self._files[op]
        prefix = case["id"] + "|"
        return {key[len(prefix):]: golden[key] for key in golden.files if key.startswith(prefix)}

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.folder / "manifest.json").read_text())

    def meta(self, case: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest's record of a case: TensorFlow's path, each array's logical dtype."""
        if case["op"].startswith(conventions.OP_PREFIX):  # each framework has its own manifest
            if case["op"] not in self._conventions:
                path = self.folder / f"{case['op']}.json"
                self._conventions[case["op"]] = json.loads(path.read_text())["cases"]
            return self._conventions[case["op"]][case["id"]]  # type: ignore[no-any-return]
        if self._cases is None:
            self._cases = self.manifest()["cases"]
        return self._cases[case["id"]]

    def tf_path(self, case: Mapping[str, Any]) -> str | None:
        """Which TensorFlow implementation produced the case (batch_norm cases only)."""
        return self.meta(case).get("tf", {}).get("tf_path")


def run_case(
    case: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    backend: Backend,
    meta: Mapping[str, Any],
) -> Outcome:
    """Run ``case`` on ``backend``; ``meta`` is the case's manifest record."""
    outcome = Outcome(case["id"], case["group"], backend.name, "pass")
    dtypes = {name: record.get("logical_dtype", record["dtype"]) for name, record in meta["arrays"].items()}
    tf_path = meta.get("tf", {}).get("tf_path")
    needed = set(dtypes.values())
    needed.add(case["dtype"])
    missing = sorted(d for d in needed if d not in backend.dtypes and d.startswith(("float", "bfloat")))
    if missing:
        outcome.status, outcome.detail = "n/a", f"{backend.name} has no {', '.join(missing)}"
        return outcome
    inputs = _Inputs(arrays, dtypes, backend)
    try:
        if case.get("expect_error"):
            return _expect_error(case, inputs, backend, outcome)
        # NaN and Inf cases make NumPy warn; the comparison is what counts.
        with np.errstate(all="ignore"):
            produced = _runner(case["op"])(case, inputs, backend)
    except Exception as error:  # a crash is a failure of this case, reported with its traceback
        outcome.status = "fail"
        outcome.worst = float("inf")
        outcome.detail = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=6)}"
        return outcome
    missing = sorted(set(required_outputs(arrays, backend)) - set(produced))
    if missing:
        outcome.status, outcome.worst = "fail", float("inf")
        outcome.detail += f"  bn_portable produced no {', '.join(missing)}\n"
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN/Inf cases: the comparison counts
        _compare(case, arrays, dtypes, produced, tf_path, outcome)
    return outcome


def _compare(case, arrays, dtypes, produced, tf_path, outcome) -> None:
    for name, actual in produced.items():
        golden = expected_name(arrays, name)
        expected = arrays[golden]
        dtype = dtypes[golden]
        source = arrays.get(source_name(name)) if name.endswith("y") else None
        limit = tolerance(dtype, name, tf_path)
        ratio = error_in_epsilons(actual, expected, dtype, source, channel_axis(case)) / limit
        truth = arrays.get(TRUTH + golden)
        if truth is not None:
            # TensorFlow's own float32 result may be further from its float64
            # truth than the tolerance (tree sums at |mean|/σ = 1e4): then being
            # close to TensorFlow would mean being as wrong as it is. An output
            # also passes when it is no further from the truth than
            # TensorFlow's result is, plus the tolerance: more accurate than
            # TensorFlow is never a failure.
            tf_error = error_in_epsilons(expected, truth, dtype, source, channel_axis(case))
            if tf_error > limit:
                outcome.against_truth.append(f"{name} ({tf_error:.3g})")
            truth_error = error_in_epsilons(actual, truth, dtype, source, channel_axis(case))
            if truth_error / (tf_error + limit) < ratio:
                ratio, expected = truth_error / (tf_error + limit), truth
        outcome.checks.append(name)
        if ratio > outcome.worst or not outcome.worst_output:
            outcome.worst, outcome.worst_output = max(ratio, outcome.worst), name
        if ratio > 1.0:
            outcome.status = "fail"
            outcome.detail += _describe_mismatch(name, actual, expected, ratio)


class _Inputs:
    """Golden inputs converted to the backend, each with its logical dtype."""

    def __init__(self, arrays, dtypes, backend):
        self.arrays, self.dtypes, self.backend = arrays, dtypes, backend

    def __call__(self, name: str) -> Any:
        return self.backend.asarray(self.arrays[name], self.dtypes[name])

    def optional(self, name: str) -> Any:
        return self(name) if name in self.arrays else None

    def numpy_outputs(self, named: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A runner's results as NumPy arrays, ``None`` left out."""
        return _numpy_outputs(self.backend, named)


def _expect_error(case, inputs, backend, outcome):
    try:
        _runner(case["op"])(case, inputs, backend)
    except (ValueError, TypeError) as error:
        outcome.checks.append(f"raises {type(error).__name__}")
        return outcome
    outcome.status, outcome.worst = "fail", float("inf")
    outcome.detail = "TensorFlow raises for this configuration; bn_portable did not raise ValueError/TypeError"
    return outcome


# The one place a runner's results leave the backend (``_Inputs.numpy_outputs``): the
# scale-out test replaces it to compute all of a case's outputs in one graph.
def _numpy_outputs(backend, named: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: backend.to_numpy(value) for name, value in named.items() if value is not None}


_INPUT_LEAVES = (
    "x", "dy", "mean", "variance", "offset", "scale", "frequency_weights", "batch_weights", "mask",
)


def required_outputs(arrays: Mapping[str, np.ndarray], backend: Backend) -> list[str]:
    """Every golden array that is an output bn_portable must reproduce on ``backend``."""
    outputs = []
    for name in arrays:
        if name.startswith(TRUTH):
            continue
        if name.startswith("init/") and not name.startswith("init/state/"):
            continue
        if name.rsplit("/", 1)[-1] in _INPUT_LEAVES and "/state/" not in name:
            continue
        if name.startswith("autodiff/") and autodiff_vjp(backend) is None:
            continue
        outputs.append(name)
    return outputs


#: The op runners under the name ``benchmarks/robustness.py`` uses.
_RUNNERS = RUNNERS


def _describe_mismatch(name, actual, expected, ratio) -> str:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return f"  {name}: shape {actual.shape} != expected {expected.shape}\n"
    with np.errstate(invalid="ignore"):
        diff = np.abs(actual - expected)
    worst = int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0
    return (
        f"  {name}: {ratio:.3g}× tolerance; worst at flat index {worst}: "
        f"got {actual.ravel()[worst]!r}, TensorFlow {expected.ravel()[worst]!r}\n"
    )


def _runner(op: str) -> Callable[..., dict[str, np.ndarray]]:
    """TensorFlow's ops in ``op_runners``; other frameworks' conventions in ``conformance.conventions``."""
    if op.startswith(conventions.OP_PREFIX):
        return conventions.runner(op)
    return RUNNERS[op]


def reproduction(case: Mapping[str, Any], backend: Backend) -> str:
    """A command that reruns exactly this case on this backend, printing every comparison."""
    return f"python -m conformance.run --backend {backend.name} --case '{case['id']}' --verbose"

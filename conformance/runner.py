"""Run one golden case on one backend and compare every output with TensorFlow's.

A case is data (``conformance/catalogue.py``); its inputs and TensorFlow's
outputs are arrays in ``conformance/goldens/<op>.npz`` under keys
``"<case id>|<array name>"``. ``run_case`` feeds the inputs to bn_portable on a
backend, and returns one ``Outcome`` with the worst error over all outputs.
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

import bn_portable as bn

from . import conventions
from .backends import Backend
from .compare import channel_axis, error_in_epsilons, source_name, tolerance

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


def _expect_error(case, inputs, backend, outcome):
    try:
        _runner(case["op"])(case, inputs, backend)
    except (ValueError, TypeError) as error:
        outcome.checks.append(f"raises {type(error).__name__}")
        return outcome
    outcome.status, outcome.worst = "fail", float("inf")
    outcome.detail = "TensorFlow raises for this configuration; bn_portable did not raise ValueError/TypeError"
    return outcome


def _static(case: Mapping[str, Any]) -> str:
    """Everything a runner's jitted function takes from the case besides its arrays.

    The op and the keywords determine the function; the step's ``is_training``
    travels as a default argument, which the jit cache also keys on. Arrays
    (inputs, initializers, state) are always passed as arguments, never
    closed over, so one compiled callable serves every case that shares them.
    """
    return json.dumps([case["op"], case["kwargs"]], sort_keys=True, default=repr)


def _numpy_outputs(backend, named: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: backend.to_numpy(value) for name, value in named.items() if value is not None}


# --- one runner per op --------------------------------------------------------


def _run_batch_normalization(case, inputs, backend):
    epsilon = case["kwargs"]["variance_epsilon"]
    y = backend.call(
        lambda x, m, v, o, s: bn.batch_normalization(x, m, v, o, s, epsilon),
        inputs("x"), inputs("mean"), inputs("variance"), inputs.optional("offset"), inputs.optional("scale"),
        static=_static(case),
    )
    return _numpy_outputs(backend, {"y": y})


def _run_moments(case, inputs, backend):
    kwargs = case["kwargs"]
    mean, variance = backend.call(
        lambda x: bn.moments(x, kwargs["axes"], keepdims=kwargs.get("keepdims", False)), inputs("x"),
        static=_static(case),
    )
    return _numpy_outputs(backend, {"mean": mean, "variance": variance})


def _run_weighted_moments(case, inputs, backend):
    kwargs = case["kwargs"]
    mean, variance = backend.call(
        lambda x, w: bn.weighted_moments(x, kwargs["axes"], w, keepdims=kwargs.get("keepdims", False)),
        inputs("x"), inputs("frequency_weights"), static=_static(case),
    )
    return _numpy_outputs(backend, {"mean": mean, "variance": variance})


def _run_fused_batch_norm(case, inputs, backend):
    kwargs = dict(case["kwargs"])
    y, mean, variance = backend.call(
        lambda x, s, o, m, v: bn.fused_batch_norm(x, s, o, m, v, **kwargs),
        inputs("x"), inputs("scale"), inputs("offset"), inputs.optional("mean"), inputs.optional("variance"),
        static=_static(case),
    )
    return _numpy_outputs(backend, {"y": y, "batch_mean": mean, "batch_variance": variance})


def layer_options(case, backend) -> dict[str, Any]:
    """The case's batch_norm keywords for this backend (activation names become callables)."""
    options = {k: v for k, v in case["kwargs"].items() if k not in ("weighted", "is_training")}
    if options.get("activation_fn") == "relu":
        xp = backend.xp
        options["activation_fn"] = lambda v: xp.maximum(v, xp.zeros_like(v))
    return options


def _initializers(inputs):
    return {
        name[len("init/"):]: inputs(name)
        for name in inputs.arrays
        if name.startswith("init/") and not name.startswith("init/state/")
    }


def _initial_state(case, inputs, backend, first_x, weights):
    """The variables as created on the first call (an inference call returns them as created)."""
    options = layer_options(case, backend)
    initializers = _initializers(inputs)
    _, state = backend.call(
        lambda x, w, i: bn.batch_norm(
            x, None, param_initializers=i, batch_weights=w, is_training=False, **options
        ),
        first_x, weights, initializers, static=_static(case),
    )
    return state


def _run_batch_norm(case, inputs, backend):
    options = layer_options(case, backend)
    produced: dict[str, Any] = {}
    state = _initial_state(
        case, inputs, backend, inputs("step0/x"), inputs.optional("step0/batch_weights")
    )
    produced.update({f"init/state/{k}": v for k, v in state._asdict().items() if v is not None})
    for k, step in enumerate(case["steps"]):
        training = step["is_training"]
        y, state = backend.call(
            lambda x, s, w, training=training: bn.batch_norm(
                x, s, batch_weights=w, is_training=training, **options
            ),
            inputs(f"step{k}/x"), state, inputs.optional(f"step{k}/batch_weights"),
            static=_static(case),
        )
        produced[f"step{k}/y"] = y
        produced.update({f"step{k}/state/{f}": v for f, v in state._asdict().items() if v is not None})
    return {n: a for n, a in _numpy_outputs(backend, produced).items() if n in inputs.arrays}


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
        if name.startswith("autodiff/") and _autodiff(backend) is None:
            continue
        outputs.append(name)
    return outputs


def expected_name(arrays: Mapping[str, np.ndarray], name: str) -> str | None:
    """The golden array an output is compared with.

    Autodiff through the forward is compared with TensorFlow's ``autodiff/*``
    arrays where the case stores them, else with the same gradient as the
    analytic backward (``tf.gradients`` through the layer is one computation).
    """
    if name in arrays:
        return name
    plain = name.removeprefix("autodiff/")
    return plain if plain != name and plain in arrays else None


def _run_fused_batch_norm_grad(case, inputs, backend):
    kwargs = case["kwargs"]
    dx, dscale, doffset = backend.call(
        lambda dy, x, s, m, v: bn.fused_batch_norm_grad(dy, x, s, m, v, **kwargs),
        inputs("dy"), inputs("x"), inputs("scale"), inputs("mean"), inputs("variance"),
        static=_static(case),
    )
    produced = {"dx": dx, "dscale": dscale, "doffset": doffset}
    autodiff = _autodiff(backend)
    if autodiff is not None and "autodiff/dx" in inputs.arrays:
        forward_kwargs = {
            "epsilon": kwargs.get("epsilon", 0.001),
            "data_format": kwargs.get("data_format", "NHWC"),
            "is_training": kwargs.get("is_training", True),
        }
        # The offset does not enter dx or dscale; the gradient cases store none.
        offset = inputs("scale") * 0
        mean = None if forward_kwargs["is_training"] else inputs("mean")
        variance = None if forward_kwargs["is_training"] else inputs("variance")

        def forward(x, s, o):
            return bn.fused_batch_norm(x, s, o, mean, variance, **forward_kwargs)[0]

        with backend.context():
            grads = autodiff(forward, inputs("dy"), (inputs("x"), inputs("scale"), offset))
        produced.update(zip(("autodiff/dx", "autodiff/dscale", "autodiff/doffset"), grads))
    return _numpy_outputs(backend, produced)


def _run_batch_norm_grad(case, inputs, backend):
    options = layer_options(case, backend)
    training = case["kwargs"].get("is_training", True)
    weights = inputs.optional("batch_weights")
    state = _initial_state(case, inputs, backend, inputs("x"), weights)

    def vjp_call(x, s, w, dy):
        y, new_state, vjp = bn.batch_norm_vjp(x, s, batch_weights=w, is_training=training, **options)
        return (y, new_state, *vjp(dy))

    y, new_state, dx, dgamma, dbeta = backend.call(
        vjp_call, inputs("x"), state, weights, inputs("dy"), static=_static(case)
    )
    produced = {"y": y, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}
    produced.update({f"init/state/{f}": v for f, v in state._asdict().items() if v is not None})
    produced.update({f"state/{f}": v for f, v in new_state._asdict().items() if v is not None})
    autodiff = _autodiff(backend)
    if autodiff is not None:

        def forward(x, gamma, beta):
            s = state._replace(gamma=gamma, beta=beta)
            return bn.batch_norm(x, s, batch_weights=weights, is_training=training, **options)[0]

        with backend.context():
            grads = autodiff(forward, inputs("dy"), (inputs("x"), state.gamma, state.beta))
        produced.update(zip(("autodiff/dx", "autodiff/dgamma", "autodiff/dbeta"), grads))
    return {n: a for n, a in _numpy_outputs(backend, produced).items() if expected_name(inputs.arrays, n)}


def _autodiff(backend: Backend) -> Callable[..., Any] | None:
    """vjp by the backend's own autodiff (PyTorch autograd, jax.vjp), or None."""
    if backend.library in ("torch", "torch_cuda"):
        return _torch_vjp
    if backend.library == "jax" and not backend.jit:
        return _jax_vjp
    return None


def _torch_vjp(forward, dy, primals):
    import torch

    leaves = [None if p is None else p.detach().clone().requires_grad_(True) for p in primals]
    present = [p for p in leaves if p is not None]
    y = forward(*leaves)
    grads = torch.autograd.grad(y, present, grad_outputs=dy, allow_unused=True)
    found = iter(grads)
    return [None if p is None else next(found) for p in leaves]


def _jax_vjp(forward, dy, primals):
    import jax

    positions = [i for i, p in enumerate(primals) if p is not None]

    def partial(*present):
        full = list(primals)
        for i, value in zip(positions, present):
            full[i] = value
        return forward(*full)

    _, pullback = jax.vjp(partial, *[primals[i] for i in positions])
    grads = iter(pullback(dy))
    return [next(grads) if p is not None else None for p in primals]


_RUNNERS: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "batch_normalization": _run_batch_normalization,
    "moments": _run_moments,
    "weighted_moments": _run_weighted_moments,
    "fused_batch_norm": _run_fused_batch_norm,
    "batch_norm": _run_batch_norm,
    "fused_batch_norm_grad": _run_fused_batch_norm_grad,
    "batch_norm_grad": _run_batch_norm_grad,
}


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
    """TensorFlow's ops here; other frameworks' conventions in ``conformance.conventions``."""
    if op.startswith(conventions.OP_PREFIX):
        return conventions.runner(op)
    return _RUNNERS[op]


def reproduction(case: Mapping[str, Any], backend: Backend) -> str:
    """A command that reruns exactly this case on this backend, printing every comparison."""
    return f"python -m conformance.run --backend {backend.name} --case '{case['id']}' --verbose"

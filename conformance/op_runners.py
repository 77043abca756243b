"""One runner per TensorFlow op: a case's golden inputs through bn_portable on a backend.

A runner takes ``(case, inputs, backend)``, ``inputs`` being the golden inputs on
the backend (``runner._Inputs``), and returns its outputs as NumPy arrays, named
as TensorFlow's are in the goldens. Where the backend has an autodiff of its own
(``autodiff_vjp``), the gradient runners also return its gradients through the forward.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

import bn_portable as bn

from .backends import Backend


def _static(case: Mapping[str, Any]) -> str:
    """Everything a runner's jitted function takes from the case besides its arrays.

    The op and the keywords determine the function; the step's ``is_training``
    travels as a default argument, which the jit cache also keys on. Arrays
    (inputs, initializers, state) are always passed as arguments, never
    closed over, so one compiled callable serves every case that shares them.
    """
    return json.dumps([case["op"], case["kwargs"]], sort_keys=True, default=repr)


def _run_batch_normalization(case, inputs, backend):
    epsilon = case["kwargs"]["variance_epsilon"]
    y = backend.call(
        lambda x, m, v, o, s: bn.batch_normalization(x, m, v, o, s, epsilon),
        inputs("x"), inputs("mean"), inputs("variance"), inputs.optional("offset"), inputs.optional("scale"),
        static=_static(case),
    )
    return inputs.numpy_outputs({"y": y})


def _run_moments(case, inputs, backend):
    kwargs = case["kwargs"]
    mean, variance = backend.call(
        lambda x: bn.moments(x, kwargs["axes"], keepdims=kwargs.get("keepdims", False)), inputs("x"),
        static=_static(case),
    )
    return inputs.numpy_outputs({"mean": mean, "variance": variance})


def _run_weighted_moments(case, inputs, backend):
    kwargs = case["kwargs"]
    mean, variance = backend.call(
        lambda x, w: bn.weighted_moments(x, kwargs["axes"], w, keepdims=kwargs.get("keepdims", False)),
        inputs("x"), inputs("frequency_weights"), static=_static(case),
    )
    return inputs.numpy_outputs({"mean": mean, "variance": variance})


def _run_fused_batch_norm(case, inputs, backend):
    kwargs = dict(case["kwargs"])
    y, mean, variance = backend.call(
        lambda x, s, o, m, v: bn.fused_batch_norm(x, s, o, m, v, **kwargs),
        inputs("x"), inputs("scale"), inputs("offset"), inputs.optional("mean"), inputs.optional("variance"),
        static=_static(case),
    )
    return inputs.numpy_outputs({"y": y, "batch_mean": mean, "batch_variance": variance})


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
    return {n: a for n, a in inputs.numpy_outputs(produced).items() if n in inputs.arrays}


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
    autodiff = autodiff_vjp(backend)
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
    return inputs.numpy_outputs(produced)


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
    autodiff = autodiff_vjp(backend)
    if autodiff is not None:

        def forward(x, gamma, beta):
            s = state._replace(gamma=gamma, beta=beta)
            return bn.batch_norm(x, s, batch_weights=weights, is_training=training, **options)[0]

        with backend.context():
            grads = autodiff(forward, inputs("dy"), (inputs("x"), state.gamma, state.beta))
        produced.update(zip(("autodiff/dx", "autodiff/dgamma", "autodiff/dbeta"), grads))
    return {n: a for n, a in inputs.numpy_outputs(produced).items() if expected_name(inputs.arrays, n)}


def autodiff_vjp(backend: Backend) -> Callable[..., Any] | None:
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


#: The runner of each TensorFlow op.
RUNNERS: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "batch_normalization": _run_batch_normalization,
    "moments": _run_moments,
    "weighted_moments": _run_weighted_moments,
    "fused_batch_norm": _run_fused_batch_norm,
    "batch_norm": _run_batch_norm,
    "fused_batch_norm_grad": _run_fused_batch_norm_grad,
    "batch_norm_grad": _run_batch_norm_grad,
}


"""``mask=`` under ``jax.jit`` and ``torch.compile(fullgraph=True)``: the masked step and its vjp traced."""

from __future__ import annotations

import numpy as np
import pytest
from conformance.compare import TOLERANCES, error_in_epsilons

import bn_portable as bn
from mask_cases import _data


def _within_contract(actual, expected, label=""):
    """Compiled against eager: the conformance suite's float32 tolerance, in epsilons."""
    error = error_in_epsilons(np.asarray(actual), np.asarray(expected), "float32")
    assert error <= TOLERANCES["float32"], f"{label}: {error:.3g} float32 epsilons"


def test_jax_jit_traces_the_masked_step_and_its_vjp() -> None:
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    x, mask = _data((6, 4, 3), {}, seed=31, offset=0.5)
    dy = np.random.default_rng(32).standard_normal(x.shape).astype(np.float32)

    def step(x, mask, dy):
        y, state, vjp = bn.batch_norm_vjp(x, mask=mask, scale=True)
        return y, state, vjp(dy)

    args = (jnp.asarray(x, jnp.float32), jnp.asarray(mask), jnp.asarray(dy))
    eager, jitted = step(*args), jax.jit(step)(*args)
    leaves = jax.tree_util.tree_leaves(eager)
    assert len(leaves) == 8  # y; beta, gamma, moving_mean, moving_variance; dx, dgamma, dbeta
    for a, b in zip(jax.tree_util.tree_leaves(jitted), leaves):
        _within_contract(np.asarray(a), np.asarray(b))


@pytest.mark.home_backend("torch")
@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be")
def test_torch_compile_fullgraph_traces_the_masked_step_and_its_vjp() -> None:
    torch = pytest.importorskip("torch")
    torch._dynamo.reset()
    x, mask = _data((4, 3, 5, 6), {"data_format": "NCHW"}, seed=41, offset=0.5)
    xs, ms = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(mask)
    dy = torch.from_numpy(np.random.default_rng(42).standard_normal(x.shape).astype(np.float32))
    _, state = bn.batch_norm(xs, data_format="NCHW", scale=True, is_training=False)

    def step(x, mask, dy):
        y, new_state, vjp = bn.batch_norm_vjp(x, state, mask=mask, data_format="NCHW", scale=True)
        return y, tuple(new_state), vjp(dy)

    def autograd_step(x, mask):
        return bn.batch_norm(x, state, mask=mask, data_format="NCHW", scale=True)

    try:
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(xs, ms, dy)
        eager = step(xs, ms, dy)
        for a, b in zip(_leaves(compiled), _leaves(eager)):
            if b is None:
                assert a is None
                continue
            _within_contract(a.detach().numpy(), b.detach().numpy())
        leaf = xs.clone().requires_grad_()
        y, _ = torch.compile(autograd_step, fullgraph=True, backend="aot_eager")(leaf, ms)
        (grad,) = torch.autograd.grad(y, [leaf], dy)
        _within_contract(grad.numpy(), eager[2][0].numpy(), "autograd through the compiled forward")
    finally:
        torch._dynamo.reset()


def _leaves(value):
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]

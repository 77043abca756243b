"""The JAX multi-device checks, run by ``test_distributed_jax`` in a fresh process.

XLA's host platform gets two CPU devices only if the flag is set before JAX
is imported, hence a process of its own. For every case of ``scaleout_cases``
(the batch split 8 + 8: shard_map needs equal shards), each device holds one
shard and synchronizes with ``jax_cross_replica_sum``; the results (y, state,
the vjp's gradients, and ``jax.grad`` through the synchronized forward) must
equal one unsharded call. A jitted call on a globally sharded batch, without
any reducer, must give the global statistics as well. Exits non-zero on the
first mismatch.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import bn_portable as bn
import scaleout_cases as cases
from bn_portable.distributed import jax_cross_replica_sum

SPLIT = (8, 8)


def main() -> int:
    if len(jax.devices("cpu")) != 2:
        print(f"expected 2 CPU devices, JAX has {jax.devices('cpu')}", file=sys.stderr)
        return 2
    mesh = jax.make_mesh((2,), ("batch",))
    checked = 0
    for index, (label, _, options, weighted) in enumerate(cases.CASES):
        data = cases.case_data(index)
        x, dy = jnp.asarray(data["x"]), jnp.asarray(data["dy"])
        w = jnp.asarray(data["weights"]) if weighted else None
        state = cases.initial_state(bn, x, data)
        reference = _numpy(cases.step(bn, x, dy, w, state, options))
        _check_shard_map(mesh, label, x, dy, w, state, options, reference)
        _check_sharded_jit(mesh, label, x, dy, w, state, options, reference)
        checked += 1
    print(f"ok: {checked} cases under shard_map and sharded jit on {len(jax.devices())} devices")
    return 0


def _check_shard_map(mesh, label, x, dy, w, state, options, reference):
    reducer = jax_cross_replica_sum("batch")
    batch = P("batch")

    def per_device(x, dy, w, state):
        out = cases.step(bn, x, dy, w, state, options, reducer)
        # dγ and dβ are each device's contribution: one row per device.
        return {k: (v[None] if k in ("dgamma", "dbeta") else v) for k, v in out.items()}

    specs = {name: (batch if name in ("y", "dx", "dgamma", "dbeta") else P()) for name in reference}
    mapped = jax.jit(
        jax.shard_map(per_device, mesh=mesh, in_specs=(batch, batch, batch, P()), out_specs=specs)
    )
    x, dy, w, state = _place(mesh, x, dy, w, state)
    produced = _numpy(mapped(x, dy, w, state))
    for name in ("dgamma", "dbeta"):
        produced[name] = produced[name].sum(axis=0)
    _compare(produced, reference, f"shard_map {label}")

    def loss(x, gamma, beta):
        y = jax.shard_map(
            lambda x, w, s: bn.batch_norm(x, s, batch_weights=w, cross_replica_sum=reducer, **options)[0],
            mesh=mesh, in_specs=(batch, batch, P()), out_specs=batch,
        )(x, w, state._replace(gamma=gamma, beta=beta))
        return jnp.sum(y * dy)

    dx, dgamma, dbeta = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, state.gamma, state.beta)
    grads = {"dx": np.asarray(dx), "dgamma": np.asarray(dgamma), "dbeta": np.asarray(dbeta)}
    _compare(grads, {k: reference[k] for k in grads}, f"jax.grad through shard_map {label}")


def _place(mesh, x, dy, w, state):
    """The batch split along its first axis over the devices; the state on every device."""
    sharding = NamedSharding(mesh, P("batch"))
    x, dy = jax.device_put(x, sharding), jax.device_put(dy, sharding)
    w = None if w is None else jax.device_put(w, sharding)
    return x, dy, w, jax.device_put(state, NamedSharding(mesh, P()))


def _check_sharded_jit(mesh, label, x, dy, w, state, options, reference):
    x_s, dy_s, w_s, state = _place(mesh, x, dy, w, state)
    if len(x_s.addressable_shards) != 2:
        raise AssertionError("the batch is not split over the two devices")
    produced = _numpy(jax.jit(lambda x, dy, w, s: cases.step(bn, x, dy, w, s, options))(x_s, dy_s, w_s, state))
    _compare(produced, reference, f"sharded jit {label}")


def _compare(produced, reference, label):
    # One "replica" holding everything: shard results are already concatenated.
    cases.assert_matches([produced], reference, label)


def _numpy(named):
    return {k: np.asarray(v) for k, v in named.items() if v is not None}


if __name__ == "__main__":
    sys.exit(main())

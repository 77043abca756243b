"""One replica of the torch.distributed tests: run by ``test_distributed_torch`` in a child process.

Every case of ``scaleout_cases`` on both splits, synchronized with
``torch_cross_replica_sum`` over gloo, gradients both through ``batch_norm_vjp``
and through autograd of ``batch_norm``; then ``recalibrate`` over this
replica's part of a dataset. Results go to ``<out>/rank<k>.npz``.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist

import bn_portable as bn
import scaleout_cases as cases
from bn_portable.distributed import torch_cross_replica_sum

RECALIBRATION_SPLIT = cases.RECALIBRATION_SPLIT
RECALIBRATION_OPTIONS = cases.RECALIBRATION_OPTIONS


def _to_torch(array):
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))


def _numpy(named):
    return {k: v.detach().numpy() for k, v in named.items() if v is not None}


def run(rank: int, world: int, port: int, out: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        reducer = torch_cross_replica_sum()
        results: dict[str, np.ndarray] = {}
        for index in range(len(cases.CASES)):
            data = cases.case_data(index)
            for split in cases.SPLITS:
                key = f"{index}|{split[0]}+{split[1]}"
                x, dy, w = (
                    _to_torch(cases.shards(data[name], split)[rank]) for name in ("x", "dy", "weights")
                )
                state = cases.initial_state(bn, x, data)
                produced = _numpy(cases.step(bn, x, dy, w, state, data["options"], reducer))
                produced.update(_autograd(x, dy, w, state, data["options"], reducer))
                results.update({f"{key}|{name}": value for name, value in produced.items()})
        batches = cases.recalibration_batches()
        mine = batches[:RECALIBRATION_SPLIT] if rank == 0 else batches[RECALIBRATION_SPLIT:]
        for label, options in RECALIBRATION_OPTIONS.items():
            state = bn.recalibrate(
                (torch.from_numpy(b) for b in mine), None, cross_replica_sum=reducer, **options
            )
            results.update(
                {f"recalibrate|{label}|{k}": v for k, v in _numpy(state._asdict()).items()}
            )
        np.savez(os.path.join(out, f"rank{rank}.npz"), **results)
    finally:
        dist.destroy_process_group()


def _autograd(x, dy, w, state, options, reducer):
    """dx, dγ, dβ by autograd through the synchronized forward (a differentiable all-reduce)."""
    x = x.clone().requires_grad_(True)
    gamma = state.gamma.clone().requires_grad_(True)
    beta = state.beta.clone().requires_grad_(True)
    y, _ = bn.batch_norm(
        x, state._replace(gamma=gamma, beta=beta), batch_weights=w, cross_replica_sum=reducer, **options
    )
    (y * dy).sum().backward()
    return {"autograd/dx": x.grad.numpy(), "autograd/dgamma": gamma.grad.numpy(), "autograd/dbeta": beta.grad.numpy()}

"""Synchronized batch norm and recalibration over two torch.distributed processes (gloo, loopback).

Both processes start and stop inside the test module, bounded in time; each
runs ``torch_replica.run``. Their results must equal one process's on the
concatenated batch (``scaleout_cases``), and recalibration over the two halves
of a dataset must equal a float64 NumPy computation over all of it.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

import scaleout_cases as cases

pytestmark = pytest.mark.scaleout
torch = pytest.importorskip("torch")

import bn_portable as bn  # noqa: E402
import torch_replica  # noqa: E402

TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> list[dict[str, np.ndarray]]:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.fail("this PyTorch build has no gloo backend for torch.distributed")
    out = tmp_path_factory.mktemp("gloo")
    context = mp.start_processes(
        torch_replica.run, args=(2, _free_port(), str(out)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two gloo processes did not finish within {TIMEOUT_S} s")
    return [dict(np.load(out / f"rank{rank}.npz")) for rank in range(2)]


def _of(results, prefix):
    return {name[len(prefix):]: value for name, value in results.items() if name.startswith(prefix)}


@pytest.mark.parametrize("split", cases.SPLITS, ids=lambda s: f"{s[0]}+{s[1]}")
@pytest.mark.parametrize("index", range(len(cases.CASES)), ids=[c[0] for c in cases.CASES])
def test_replicas_match_one_process(replicas, index, split) -> None:
    data = cases.case_data(index)
    to = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    state = cases.initial_state(bn, to(data["x"]), data)
    reference = cases.step(bn, to(data["x"]), to(data["dy"]), to(data["weights"]), state, data["options"])
    expected = {k: v.numpy() for k, v in reference.items()}
    expected.update({f"autograd/{k}": expected[k] for k in ("dx", "dgamma", "dbeta")})
    prefix = f"{index}|{split[0]}+{split[1]}|"
    produced = [_of(results, prefix) for results in replicas]
    assert set(produced[0]) == set(expected), "a replica did not produce every output"
    cases.assert_matches(produced, expected, f"{cases.CASES[index][0]} {split}")


@pytest.mark.parametrize("label", list(torch_replica.RECALIBRATION_OPTIONS))
def test_recalibrate_over_two_processes(replicas, label) -> None:
    options = torch_replica.RECALIBRATION_OPTIONS[label]
    everything = np.concatenate(cases.recalibration_batches()).astype(np.float64)
    count = everything.size // everything.shape[-1]
    mean = everything.mean(axis=(0, 1, 2))
    m2 = ((everything - mean) ** 2).sum(axis=(0, 1, 2))
    variance = m2 / (count - 1) if options.get("fused") else m2 / count
    for rank, results in enumerate(replicas):
        state = _of(results, f"recalibrate|{label}|")
        cases._close(state["moving_mean"], mean, f"moving_mean on replica {rank}")
        cases._close(state["moving_variance"], variance, f"moving_variance on replica {rank}")
        if options.get("renorm"):
            cases._close(state["moving_stddev"], np.sqrt(variance + 0.001), f"moving_stddev on replica {rank}")

"""Synchronized statistics with replicas simulated by threads, on every backend.

The reducer is an all-reduce between threads (``ThreadReplicas``), so the
whole cross-replica logic runs on every library, Dask lazily. Real processes
(torch.distributed) and devices (JAX) are tested in test_distributed_*.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conformance.backends import Backend

import bn_portable as bn
import scaleout_cases as cases


def _skip_jit(backend: Backend) -> None:
    if backend.jit:
        pytest.skip("thread replicas exchange concrete arrays; jit is covered by the JAX device test")


@pytest.mark.parametrize("split", cases.SPLITS, ids=lambda s: f"{s[0]}+{s[1]}")
@pytest.mark.parametrize("index", range(len(cases.CASES)), ids=[c[0] for c in cases.CASES])
def test_layer_matches_the_concatenated_batch(backend: Backend, index: int, split) -> None:
    _skip_jit(backend)
    data = cases.case_data(index)
    to = lambda a: None if a is None else backend.asarray(a, "float32")  # noqa: E731
    with backend.context():
        state = cases.initial_state(bn, to(data["x"]), data)
        reference = cases.step(bn, to(data["x"]), to(data["dy"]), to(data["weights"]), state, data["options"])
    arguments = [
        (to(x), to(dy), to(w))
        for x, dy, w in zip(
            cases.shards(data["x"], split), cases.shards(data["dy"], split), cases.shards(data["weights"], split)
        )
    ]

    def replica(reducer, x, dy, w):
        return cases.step(bn, x, dy, w, state, data["options"], reducer)

    # Entered once, here: Dask's configuration (a scheduler that fails on any
    # compute inside the calls) is process-wide, not per thread.
    with backend.context():
        results = cases.ThreadReplicas(2).run(replica, arguments)
    numpy_results = [{k: backend.to_numpy(v) for k, v in r.items()} for r in results]
    expected = {k: backend.to_numpy(v) for k, v in reference.items()}
    cases.assert_matches(numpy_results, expected, cases.CASES[index][0])


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_moments_match_the_concatenated_batch(backend: Backend, weighted: bool) -> None:
    _skip_jit(backend)
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((16, 3, 5)) + 50.0).astype(np.float32)
    w = rng.uniform(0, 3, (16, 1, 1)).astype(np.float32)
    split = (5, 11)
    axes = (0, 1)

    def call(reducer, x, w):
        if weighted:
            return bn.weighted_moments(x, axes, w, cross_replica_sum=reducer, keepdims=True)
        return bn.moments(x, axes, cross_replica_sum=reducer, keepdims=True)

    arguments = [
        (backend.asarray(a, "float32"), backend.asarray(b, "float32"))
        for a, b in zip(cases.shards(x, split), cases.shards(w, split))
    ]
    with backend.context():
        results = cases.ThreadReplicas(2).run(call, arguments)
    full = np.asarray(x, np.float64)
    weights = np.broadcast_to(np.asarray(w, np.float64), full.shape) if weighted else np.ones_like(full)
    mean = (weights * full).sum(axis=axes, keepdims=True) / weights.sum(axis=axes, keepdims=True)
    variance = (weights * (full - mean) ** 2).sum(axis=axes, keepdims=True) / weights.sum(axis=axes, keepdims=True)
    for rank, (m, v) in enumerate(results):
        cases._close(backend.to_numpy(m), mean, f"mean on replica {rank}")
        cases._close(backend.to_numpy(v), variance, f"variance on replica {rank}")


def test_reducer_must_keep_the_shape() -> None:
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="cross_replica_sum must return an array of its argument's shape"):
        bn.moments(x, 0, cross_replica_sum=lambda a: a[0])


def test_reducer_must_be_callable() -> None:
    x = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match="cross_replica_sum must be a callable"):
        bn.batch_norm(x, cross_replica_sum=3)
    with pytest.raises(TypeError, match="cross_replica_sum must be a callable"):
        bn.weighted_moments(x, 0, np.ones((4, 1), np.float32), cross_replica_sum="sum")


def test_one_replica_is_the_plain_call() -> None:
    """With one replica (the identity as reducer) the results are the unsynchronized ones."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 4)).astype(np.float32)
    for options in ({}, {"fused": True}, {"zero_debias_moving_mean": True}):
        y, state = bn.batch_norm(x, **options)
        y_sync, state_sync = bn.batch_norm(x, cross_replica_sum=lambda a: a, **options)
        cases._close(y_sync, y, f"y {options}")
        for field, value in state._asdict().items():
            if value is not None:
                cases._close(getattr(state_sync, field), value, f"{field} {options}")


def test_torch_reducer_needs_a_process_group() -> None:
    dist = pytest.importorskip("torch.distributed")
    if dist.is_available() and dist.is_initialized():
        pytest.fail("a process group is already initialized in the test process")
    from bn_portable.distributed import torch_cross_replica_sum

    with pytest.raises(RuntimeError, match="init_process_group"):
        torch_cross_replica_sum()


def test_jax_reducer_needs_an_axis_name() -> None:
    pytest.importorskip("jax")
    from bn_portable.distributed import jax_cross_replica_sum

    with pytest.raises(TypeError, match="axis_name must be the mapped axis name"):
        jax_cross_replica_sum(None)


def test_importing_bn_portable_imports_no_distributed_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bn_portable, bn_portable.distributed\n"
        "loaded = [m for m in ('torch', 'jax', 'dask', 'distributed', 'tqdm') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr

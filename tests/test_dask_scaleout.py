"""Dask: every scale-out entry point stays lazy and equals NumPy for any chunking;
a real ``dask.distributed.LocalCluster`` with two worker processes matches the goldens.

Laziness is checked with the conformance suite's scheduler that fails on any
compute: the calls only build graphs, and computing happens afterwards.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
from conformance.compare import error_in_epsilons

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import bn_portable as bn  # noqa: E402

RNG = np.random.default_rng(11)
X = (RNG.standard_normal((12, 4, 6, 5)) * 2.0 + 30.0).astype(np.float32)
DY = RNG.standard_normal(X.shape).astype(np.float32)
WEIGHTS = RNG.uniform(0.0, 2.0, 12).astype(np.float32)

#: Single chunk; the batch split unevenly; every reduced axis split; the channels split too.
CHUNKINGS = {
    "one": X.shape,
    "batch": (5, 4, 6, 5),
    "reduced-axes": (3, 3, 4, 5),
    "all-axes": (7, 3, 5, 2),
}


def _forbid_compute(*args, **kwargs):
    raise AssertionError("a Dask array was computed inside a bn_portable call; calls must stay lazy")


@contextlib.contextmanager
def _lazy():
    with dask.config.set(scheduler=_forbid_compute):
        yield


def _close(actual, expected, what, source=None):
    # y is also judged against its input, as the conformance suite judges it:
    # with |mean| ≫ σ a one-ulp difference in a statistic moves y by many ulps.
    error = error_in_epsilons(np.asarray(actual), np.asarray(expected), "float32", source, -1)
    assert error <= 64, f"{what}: {error:.3g} float32 epsilons off"


def _compare(lazy_out, numpy_out, what):
    (computed,) = dask.compute(lazy_out, scheduler="sync")
    for name in numpy_out:
        if numpy_out[name] is None:
            continue
        if name in SUM_SCALES:
            _close_sum(computed[name], numpy_out[name], SUM_SCALES[name], f"{what}: {name}")
        else:
            _close(computed[name], numpy_out[name], f"{what}: {name}", X if name == "y" else None)


def _sum_scales():
    """Σ|terms| per channel of the parameter gradients' sums, dγ = Σ dy·x̂ and dβ = Σ dy.

    A float32 sum of n terms is accurate to a few eps·Σ|terms| (not eps·|Σ|),
    and NumPy (a sequential loop over non-contiguous axes) and Dask (one
    partial sum per chunk) sum in different orders, so the parameter gradients
    are compared on that scale; every other output on its own magnitude.
    """
    x, dy = X.astype(np.float64), DY.astype(np.float64)
    normalized = (x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))
    return {"dgamma": np.abs(dy * normalized).sum(axis=(0, 1, 2)), "dbeta": np.abs(dy).sum(axis=(0, 1, 2))}


SUM_SCALES = _sum_scales()


def _close_sum(actual, expected, scale, what):
    error = np.max(np.abs(np.asarray(actual, np.float64) - expected) / scale) / np.finfo(np.float32).eps
    assert error <= 64, f"{what}: {error:.3g} float32 epsilons of Σ|terms| off"


LAYER_OPTIONS = {
    "keras_layer": {"scale": True},
    "keras_fused": {"fused": True, "scale": True},
    "slim_fused": {"fused": True, "zero_debias_moving_mean": True},
    "legacy/weights": {"scale": True, "weights": True},
    "renorm": {"renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}},
}


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("label", list(LAYER_OPTIONS))
def test_batch_norm_and_vjp(label, chunking) -> None:
    options = dict(LAYER_OPTIONS[label])
    weights = WEIGHTS if options.pop("weights", False) else None

    def run(x, dy, w):
        y, state, vjp = bn.batch_norm_vjp(x, None, batch_weights=w, **options)
        dx, dgamma, dbeta = vjp(dy)
        return {"y": y, "dx": dx, "dgamma": dgamma, "dbeta": dbeta, **state._asdict()}

    expected = run(X, DY, weights)
    chunks = CHUNKINGS[chunking]
    lazy_w = None if weights is None else da.from_array(weights, chunks=chunks[0])
    with _lazy():
        produced = run(da.from_array(X, chunks=chunks), da.from_array(DY, chunks=chunks), lazy_w)
    _compare(produced, expected, f"{label} {chunking}")


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_statistics(chunking) -> None:
    axes = (0, 1, 2)
    w = WEIGHTS[:, None, None, None]

    def run(x, w):
        mean, variance = bn.moments(x, axes)
        weighted_mean, weighted_variance = bn.weighted_moments(x, axes, w)
        part = bn.partial_moments(x, axes, frequency_weights=w)
        merged = bn.merge_moments(bn.partial_moments(x[:5], axes), bn.partial_moments(x[5:], axes))
        state = bn.recalibrate(x, None, fused=True)
        batches = bn.recalibrate((x[i : i + 4] for i in range(0, 12, 4)), None)
        return {
            "mean": mean, "variance": variance, "weighted_mean": weighted_mean,
            "weighted_variance": weighted_variance, "count": part.count, "part_mean": part.mean,
            "m2": part.m2, "merged_mean": merged.mean, "merged_m2": merged.m2,
            "moving_mean": state.moving_mean, "moving_variance": state.moving_variance,
            "batches_moving_variance": batches.moving_variance,
        }

    expected = run(X, w)
    chunks = CHUNKINGS[chunking]
    with _lazy():
        produced = run(da.from_array(X, chunks=chunks), da.from_array(w, chunks=(chunks[0], 1, 1, 1)))
    _compare(produced, expected, chunking)


#: One training case per TensorFlow path of the layer, weights, renorm and a gradient.
CLUSTER_CASES = (
    "batch_norm/core/r5/NHWC/float32/fused=1/plain",  # keras_fused
    "batch_norm/core/r4/NHWC/float32/fused=1/zero_debias",  # slim_fused
    "batch_norm/core/r5/NHWC/float32/fused=1/zero_debias",  # legacy
    "batch_norm/core/r4/NCHW/float32/fused=0/weighted",  # legacy, batch weights
    "batch_norm/renorm/r5/NCHW/float32/fused=1/clip_active",  # keras_layer, renorm
    "batch_norm_grad/r5/NCHW/float32/fused=1/train",
)


@pytest.mark.scaleout
def test_local_cluster_with_two_worker_processes_matches_the_goldens(monkeypatch) -> None:
    distributed = pytest.importorskip("distributed")
    from conformance import backends, catalogue, runner
    from conformance.runner import Goldens, run_case

    def many_chunks(array, dtype):
        # One sample per chunk, and the next axis cut in two as well: the
        # reductions combine partial results across both axes and workers.
        chunks = tuple({0: 1, 1: max(1, (n + 1) // 2)}.get(axis, n) for axis, n in enumerate(array.shape))
        return da.from_array(array.astype(dtype, copy=True), chunks=chunks)

    def one_compute(backend, named):
        # Every output of a case in one graph: shared work runs once on the cluster.
        names = [name for name, value in named.items() if value is not None]
        values = dask.compute(*(named[name] for name in names))
        return {name: np.asarray(value) for name, value in zip(names, values)}

    monkeypatch.setitem(backends._TO, "dask", many_chunks)
    monkeypatch.setattr(runner, "_numpy_outputs", one_compute)
    goldens = Goldens()
    chosen = [case for case in catalogue.cases() if case["id"] in CLUSTER_CASES]
    assert len(chosen) == len(CLUSTER_CASES)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as tasks,
    ):
        assert len(client.scheduler_info()["workers"]) == 2
        outcomes = [run_case(c, goldens.arrays(c), backends.by_name("dask"), goldens.meta(c)) for c in chosen]
    workers = {task["worker"] for task in tasks.data}  # collected when the task stream closes
    failed = [f"{o.case_id}: {o.detail}" for o in outcomes if o.status != "pass"]
    assert not failed, "\n".join(failed)
    assert len(workers) == 2, f"the graphs ran on {len(workers)} worker(s), not both"

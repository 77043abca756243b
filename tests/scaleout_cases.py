"""Shared data and checks of the scale-out tests (replicas simulated by threads or processes).

Each case normalizes a global batch of 16 samples split over two replicas and
compares every replica's results with one call on the whole batch: y and dx
shard by shard, the new state on every replica, and dγ, dβ summed over the
replicas (each replica returns its own contribution, as autograd does).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from conformance.compare import error_in_epsilons, tolerance

#: The global batch size and the two splits of the issue (uneven, and one empty shard).
BATCH = 16
SPLITS = ((5, 11), (0, 16))

_CLIP = {"rmin": 0.7, "rmax": 1.4, "dmax": 0.5}

#: (id, sample shape, options, weighted): every TensorFlow path of the layer.
CASES = (
    ("keras_layer/r4", (3, 2, 4), {"scale": True}, False),
    ("keras_layer/r2/renorm", (5,), {"scale": True, "renorm": True, "renorm_clipping": _CLIP}, False),
    ("legacy/r4/weights", (3, 2, 4), {"scale": True}, True),
    ("legacy/r3/zero-debias", (3, 4), {"scale": True, "zero_debias_moving_mean": True}, False),
    ("slim_fused/r4/zero-debias", (3, 2, 4), {"scale": True, "fused": True, "zero_debias_moving_mean": True}, False),
    ("slim_fused/r2", (5,), {"scale": True, "fused": True}, False),
    ("keras_fused/r4/NCHW", (4, 3, 2), {"scale": True, "fused": True, "data_format": "NCHW"}, False),
)


#: The recalibration dataset: 100 batches of uneven sizes; replica 0 takes the first 37.
RECALIBRATION_BATCHES = 100
RECALIBRATION_SPLIT = 37
RECALIBRATION_OPTIONS = {
    "plain": {},
    "fused": {"fused": True},
    "renorm": {"renorm": True},
}


def recalibration_batches() -> list[np.ndarray]:
    """The dataset of the recalibration tests (float32, 6 channels, NHWC, means far from 0)."""
    rng = np.random.default_rng(2026)
    sizes = rng.integers(1, 24, RECALIBRATION_BATCHES)
    offsets = np.linspace(-30.0, 60.0, 6)
    return [
        (rng.standard_normal((int(n), 2, 3, 6)) * np.linspace(0.5, 3.0, 6) + offsets).astype(np.float32)
        for n in sizes
    ]


def case_data(index: int) -> dict[str, Any]:
    """Inputs of case ``index`` as float32 NumPy arrays (the global batch)."""
    _, sample, options, weighted = CASES[index]
    rng = np.random.default_rng(1000 + index)
    channels = sample[0] if options.get("data_format") == "NCHW" else sample[-1]
    shape = (BATCH, *sample)
    # A mean far from zero against the spread: a one-pass variance would show.
    x = (rng.standard_normal(shape) * 1.5 + 20.0).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    weights = rng.uniform(0.0, 2.0, BATCH).astype(np.float32) if weighted else None
    initializers = {
        "gamma": [1.0 + 0.1 * c for c in range(channels)],
        "beta": [0.05 * c - 0.1 for c in range(channels)],
        "moving_mean": [19.0 + 0.5 * c for c in range(channels)],
        "moving_variance": [1.5 + 0.25 * c for c in range(channels)],
    }
    return {"x": x, "dy": dy, "weights": weights, "options": dict(options), "initializers": initializers}


def shards(array: np.ndarray | None, split: tuple[int, int]) -> list[np.ndarray | None]:
    if array is None:
        return [None] * len(split)
    bounds = np.cumsum((0, *split))
    return [array[bounds[i] : bounds[i + 1]] for i in range(len(split))]


def initial_state(bn: Any, x: Any, data: dict[str, Any]) -> Any:
    """The layer's variables from the case's initializers (an inference call creates them)."""
    _, state = bn.batch_norm(
        x, None, is_training=False, param_initializers=data["initializers"], **data["options"]
    )
    return state


def step(bn: Any, x, dy, weights, state, options, cross_replica_sum=None) -> dict[str, Any]:
    """One training step and its vjp: y, state fields, dx, dgamma, dbeta."""
    y, new_state, vjp = bn.batch_norm_vjp(
        x, state, batch_weights=weights, cross_replica_sum=cross_replica_sum, **options
    )
    dx, dgamma, dbeta = vjp(dy)
    out = {"y": y, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}
    out.update({f"state/{k}": v for k, v in new_state._asdict().items() if v is not None})
    return out


def assert_matches(replicas: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray], label: str) -> None:
    """Replica results against the single-process reference, in conformance epsilons."""
    for name, expected in reference.items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("y", "dx"):
            actual = np.concatenate([r[name] for r in replicas], axis=0)
            _close(actual, expected, f"{label}: {name} (shards concatenated)")
        elif leaf in ("dgamma", "dbeta"):
            _close(sum(r[name].astype(np.float64) for r in replicas), expected, f"{label}: {name} summed")
        else:
            for rank, replica in enumerate(replicas):
                _close(replica[name], expected, f"{label}: {name} on replica {rank}")


def _close(actual, expected, label):
    error = error_in_epsilons(np.asarray(actual), np.asarray(expected), "float32")
    limit = tolerance("float32", "y", None)
    assert error <= limit, f"{label}: {error:.3g} float32 epsilons off (tolerance {limit})"


class ThreadReplicas:
    """Replicas as threads of one process, with an all-reduce built on a barrier.

    Every thread adds the deposited arrays in rank order, so all get the same
    bits, as a real all-reduce gives.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._barrier = threading.Barrier(count, timeout=60)
        self._slots: list[Any] = [None] * count

    def reducer(self, rank: int):
        def cross_replica_sum(array):
            self._slots[rank] = array
            self._barrier.wait()
            total = self._slots[0]
            for other in self._slots[1:]:
                total = total + other
            self._barrier.wait()  # nobody deposits the next array before all have read
            return total

        return cross_replica_sum

    def run(self, function, arguments: list[tuple]) -> list[Any]:
        """``function(reducer, *arguments[rank])`` on every replica; results in rank order."""
        results: list[Any] = [None] * self.count
        errors: list[BaseException] = []

        def target(rank):
            try:
                results[rank] = function(self.reducer(rank), *arguments[rank])
            except BaseException as error:  # reported below, in the test's thread
                errors.append(error)
                self._barrier.abort()

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        if errors:
            raise errors[0]
        return results

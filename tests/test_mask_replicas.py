"""``mask=`` across replicas simulated by threads: uneven masks give the whole batch's results."""

from __future__ import annotations

import numpy as np
import pytest
from conformance.backends import Backend

import bn_portable as bn
import scaleout_cases as cases
from mask_cases import _channel, _close, _data, _masked_truth

RNG = np.random.default_rng(20261205)


@pytest.mark.parametrize("split", cases.SPLITS, ids=lambda s: f"{s[0]}+{s[1]}")
@pytest.mark.parametrize(
    "options",
    [{"scale": True}, {"scale": True, "data_format": "NCHW"}, {"scale": True, "renorm": True}],
    ids=["NHWC", "NCHW", "renorm"],
)
def test_replicas_with_uneven_masks_match_the_whole_batch(backend: Backend, split, options) -> None:
    if backend.jit:
        pytest.skip("thread replicas exchange concrete arrays; jit is covered by the JAX device tests")
    shape = (cases.BATCH, 3, 2, 4) if options.get("data_format") == "NCHW" else (cases.BATCH, 2, 4, 3)
    x, _ = _data(shape, options, seed=21)
    mask_shape = tuple(n for a, n in enumerate(shape) if a != _channel(shape, options))
    # Uneven: the first replica's samples count far less than the second's.
    keep = np.where(np.arange(cases.BATCH) < split[0], 0.2, 0.8).reshape((-1,) + (1,) * (len(mask_shape) - 1))
    mask = np.random.default_rng(22).random(mask_shape) < keep
    dy = np.random.default_rng(23).standard_normal(shape)
    to = lambda a, d="float32": backend.asarray(a, d)  # noqa: E731
    init = {"gamma": [1.0, 1.1, 1.2], "beta": [0.0, 0.1, -0.1], "moving_mean": [19.0] * 3}
    with backend.context():
        _, state = bn.batch_norm(to(x), is_training=False, param_initializers=init, **options)

    def step(reducer, x, dy, mask):
        y, new_state, vjp = bn.batch_norm_vjp(x, state, mask=mask, cross_replica_sum=reducer, **options)
        dx, dgamma, dbeta = vjp(dy)
        out = {"y": y, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}
        out.update({f"state/{k}": v for k, v in new_state._asdict().items() if v is not None})
        return out

    with backend.context():
        reference = step(None, to(x), to(dy), to(mask, "bool"))
    arguments = [
        (to(a), to(b), to(m, "bool"))
        for a, b, m in zip(cases.shards(x, split), cases.shards(dy, split), cases.shards(mask, split))
    ]
    with backend.context():
        results = cases.ThreadReplicas(2).run(step, arguments)
    numpy_results = [{k: backend.to_numpy(v) for k, v in r.items()} for r in results]
    expected = {k: backend.to_numpy(v) for k, v in reference.items()}
    cases.assert_matches(numpy_results, expected, f"mask {options}")
    # Per-replica means would differ: the global statistics are the count-weighted ones.
    mean, _ = _masked_truth(x.astype(np.float32), mask, _channel(shape, options))
    decay = 0.999
    _close(numpy_results[0]["state/moving_mean"], 19.0 * decay + mean * (1 - decay), 1e-6, "moving_mean")


def test_masked_moments_across_replicas_are_the_global_ones(backend: Backend) -> None:
    if backend.jit:
        pytest.skip("thread replicas exchange concrete arrays")
    x = (RNG.standard_normal((12, 3, 2)) + 40.0).astype(np.float32)
    mask = np.zeros((12, 3, 1), bool)
    mask[:2] = True  # replica 0 (4 samples) counts 6 elements per channel
    mask[4:, 1:] = True  # replica 1 (8 samples) counts 16
    arguments = [
        (backend.asarray(x[s], "float32"), backend.asarray(mask[s], "bool")) for s in (slice(0, 4), slice(4, 12))
    ]

    def call(reducer, x, m):
        return bn.moments(x, (0, 1), mask=m, cross_replica_sum=reducer)

    with backend.context():
        results = cases.ThreadReplicas(2).run(call, arguments)
    mean, variance = _masked_truth(x, mask[..., 0], 2)
    for rank, (m, v) in enumerate(results):
        _close(backend.to_numpy(m), mean, 1e-6, f"mean on replica {rank}")
        _close(backend.to_numpy(v), variance, 1e-4, f"variance on replica {rank}")

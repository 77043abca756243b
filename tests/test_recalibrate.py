"""``recalibrate`` against a float64 NumPy computation of the population statistics."""

from __future__ import annotations

import numpy as np
import pytest
from conformance.backends import Backend
from conformance.compare import error_in_epsilons

import bn_portable as bn
import scaleout_cases as cases

EPSILON = 0.001


def _population(batches, channel=-1):
    everything = np.moveaxis(np.concatenate(batches).astype(np.float64), channel, -1)
    flat = everything.reshape(-1, everything.shape[-1])
    mean = flat.mean(axis=0)
    m2 = ((flat - mean) ** 2).sum(axis=0)
    return mean, m2, flat.shape[0]


def _close(actual, expected, what):
    error = error_in_epsilons(np.asarray(actual), np.asarray(expected), "float32")
    assert error <= 64, f"{what}: {error:.3g} float32 epsilons off"


OPTIONS = {
    "keras_layer": ({}, False),
    "keras_fused": ({"fused": True}, True),
    "slim_fused/zero-debias": ({"fused": True, "zero_debias_moving_mean": True}, True),
    "legacy/zero-debias": ({"zero_debias_moving_mean": True}, False),
    "renorm": ({"renorm": True, "scale": True}, False),
}


@pytest.mark.parametrize("label", list(OPTIONS))
def test_population_statistics_over_100_uneven_batches(backend: Backend, label: str) -> None:
    options, bessel = OPTIONS[label]
    batches = cases.recalibration_batches()
    assert len(batches) == 100 and len({b.shape[0] for b in batches}) > 10
    if backend.jit or "lazy" in backend.traits:
        # One traced function or one task graph over 100 batches of different
        # shapes takes minutes to build; 12 uneven batches exercise the same code.
        batches = batches[:12]
    _, state = bn.batch_norm(backend.asarray(batches[0], "float32"), None, **options)

    def run(*arrays):
        return bn.recalibrate(iter(arrays), state, **options)  # a generator of batches

    new = backend.call(run, *(backend.asarray(b, "float32") for b in batches))
    mean, m2, count = _population(batches)
    variance = m2 / (count - 1) if bessel else m2 / count
    _close(backend.to_numpy(new.moving_mean), mean, "moving_mean")
    _close(backend.to_numpy(new.moving_variance), variance, "moving_variance")
    if options.get("renorm"):
        _close(backend.to_numpy(new.moving_stddev), np.sqrt(variance + EPSILON), "moving_stddev")
    for field in ("beta", "gamma", "moving_mean_biased", "local_step", "renorm_mean", "renorm_stddev"):
        before, after = getattr(state, field), getattr(new, field)
        assert (before is None) == (after is None)
        if before is not None:
            np.testing.assert_array_equal(backend.to_numpy(after), backend.to_numpy(before), err_msg=field)


def test_nchw_and_one_array_as_the_dataset() -> None:
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((50, 4, 3, 3)) * 0.1 + 500.0).astype(np.float32)
    state = bn.recalibrate(data, None, data_format="NCHW")
    mean, m2, count = _population([data], channel=1)
    _close(state.moving_mean, mean, "moving_mean")
    _close(state.moving_variance, m2 / count, "moving_variance")


def test_does_not_depend_on_batching() -> None:
    batches = cases.recalibration_batches()
    everything = np.concatenate(batches)
    one = bn.recalibrate([everything], None, fused=True)
    many = bn.recalibrate(batches, None, fused=True)
    _close(many.moving_mean, one.moving_mean, "moving_mean")
    _close(many.moving_variance, one.moving_variance, "moving_variance")


def test_inputs_are_not_mutated_and_the_state_is_new() -> None:
    batches = cases.recalibration_batches()[:3]
    copies = [b.copy() for b in batches]
    _, state = bn.batch_norm(batches[0])
    before = {k: np.copy(v) for k, v in state._asdict().items() if v is not None}
    new = bn.recalibrate(batches, state)
    for b, c in zip(batches, copies):
        np.testing.assert_array_equal(b, c)
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(state, k), v)
    assert new.moving_mean is not state.moving_mean


def test_progress_bar(capsys) -> None:
    pytest.importorskip("tqdm")
    batches = cases.recalibration_batches()[:5]
    quiet = bn.recalibrate(batches, None)
    shown = bn.recalibrate(batches, None, progress=True)
    np.testing.assert_array_equal(shown.moving_mean, quiet.moving_mean)
    assert "recalibrate" in capsys.readouterr().err


def test_validation() -> None:
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="batches is empty"):
        bn.recalibrate([], None)
    with pytest.raises(TypeError, match="takes no batch_weights"):
        bn.recalibrate([x], None, batch_weights=np.ones(4, np.float32))
    with pytest.raises(TypeError, match=r"unknown options \['momentum'\]"):
        bn.recalibrate([x], None, momentum=0.9)
    with pytest.raises(TypeError, match=r"batches\[1\] must be an array"):
        bn.recalibrate([x, [1.0, 2.0]], None)
    with pytest.raises(TypeError, match="batches must be an iterable"):
        bn.recalibrate(3, None)
    with pytest.raises(ValueError, match=r"state.beta must have shape \(5,\)"):
        bn.recalibrate([x, np.ones((4, 5), np.float32)], None)
    with pytest.raises(TypeError, match="progress must be a Python bool"):
        bn.recalibrate([x], None, progress="yes")
    with pytest.raises(TypeError, match="cross_replica_sum must be a callable"):
        bn.recalibrate([x], None, cross_replica_sum=1)

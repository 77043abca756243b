"""``skip_nonfinite=True``: a batch with non-finite statistics leaves the state as it was, counted.

Checked on every backend (jax-jit traces the call, Dask must stay lazy: the
``backend`` fixture's calls fail on any compute), on every TensorFlow path.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest

import bn_portable as bn

RNG = np.random.default_rng(5)
X = RNG.normal(0.5, 2.0, size=(4, 3, 2, 5)).astype(np.float32)
X2 = RNG.normal(-1.0, 0.5, size=X.shape).astype(np.float32)

PATHS = {
    "keras_layer": {},
    "keras_fused": {"fused": True},
    "slim_fused": {"fused": True, "zero_debias_moving_mean": True},
    "legacy_zero_debias": {"zero_debias_moving_mean": True},
    "legacy_weighted": {"batch_weights": np.array([1.0, 2.0, 0.0, 1.0])},
    "renorm": {"renorm": True, "renorm_clipping": {"rmax": 3.0, "dmax": 5.0}},
}


@contextlib.contextmanager
def _quiet():
    """A non-finite batch makes NumPy warn about its own arithmetic (TensorFlow is silent)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _bad(value):
    x = X2.copy()
    x[1, 2, 0, 3] = value
    return x


def _run(backend, x, state, options, *, vjp=False):
    xb = backend.asarray(x, "float32")
    options = dict(options)
    weights = options.pop("batch_weights", None)
    wb = None if weights is None else backend.asarray(weights, "float32")
    function = bn.batch_norm_vjp if vjp else bn.batch_norm

    def step(x_, w_, s_):
        return function(x_, s_, batch_weights=w_, skip_nonfinite=True, **options)[:2]

    with _quiet():
        y, new_state = backend.call(step, xb, wb, state)
        return backend.to_numpy(y), new_state


def _numpy_state(backend, state):
    with _quiet():
        return {k: backend.to_numpy(v) for k, v in state._asdict().items() if v is not None}


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_nonfinite_batch_keeps_the_state_and_is_counted(backend, path, bad):
    options = PATHS[path]
    _, first = _run(backend, X, None, options)
    before = _numpy_state(backend, first)
    assert before["skipped_steps"] == 0 and before["skipped_steps"].dtype == np.int32
    y, second = _run(backend, _bad(bad), first, options)
    after = _numpy_state(backend, second)
    assert after["skipped_steps"] == 1
    for field, value in before.items():
        if field != "skipped_steps":
            np.testing.assert_array_equal(after[field], value, err_msg=field)
    assert not np.isfinite(y).all()  # y is still the batch's own output
    # The next finite batch updates from the kept state, as if the bad batch never came.
    _, third = _run(backend, X2, second, options)
    _, direct = _run(backend, X2, first, options)
    third_np, direct_np = _numpy_state(backend, third), _numpy_state(backend, direct)
    assert third_np.pop("skipped_steps") == 1 and direct_np.pop("skipped_steps") == 0
    for field, value in direct_np.items():
        np.testing.assert_array_equal(third_np[field], value, err_msg=field)


@pytest.mark.parametrize("path", list(PATHS))
def test_a_finite_batch_updates_as_without_the_option(backend, path):
    options = dict(PATHS[path])
    _, with_option = _run(backend, X, None, options)
    xb = backend.asarray(X, "float32")
    weights = options.pop("batch_weights", None)
    wb = None if weights is None else backend.asarray(weights, "float32")
    _, without = backend.call(lambda x_, w_: bn.batch_norm(x_, batch_weights=w_, **options), xb, wb)
    guarded, plain = _numpy_state(backend, with_option), _numpy_state(backend, without)
    assert guarded.pop("skipped_steps") == 0
    assert guarded.keys() == plain.keys()
    for field, value in plain.items():
        np.testing.assert_array_equal(guarded[field], value, err_msg=field)


def test_batch_norm_vjp_keeps_the_state_too(backend):
    _, first = _run(backend, X, None, {}, vjp=True)
    _, second = _run(backend, _bad(np.nan), first, {}, vjp=True)
    before, after = _numpy_state(backend, first), _numpy_state(backend, second)
    assert after.pop("skipped_steps") == 1
    for field, value in after.items():
        np.testing.assert_array_equal(value, before[field], err_msg=field)


def test_without_the_option_a_nonfinite_batch_poisons_the_state_as_in_tensorflow():
    _, state = bn.batch_norm(X)
    with _quiet():
        _, state = bn.batch_norm(_bad(np.nan), state)
    assert np.isnan(state.moving_mean).any() and np.isnan(state.moving_variance).any()
    assert state.skipped_steps is None


def test_inference_leaves_the_counter_alone():
    _, state = bn.batch_norm(X, skip_nonfinite=True)
    with _quiet():
        _, same = bn.batch_norm(_bad(np.inf), state, is_training=False, skip_nonfinite=True)
    assert same.skipped_steps is state.skipped_steps


def test_the_state_must_match_the_option():
    _, guarded = bn.batch_norm(X, skip_nonfinite=True)
    _, plain = bn.batch_norm(X)
    with pytest.raises(ValueError, match=r"skip_nonfinite=False\) needs the fields"):
        bn.batch_norm(X, guarded)
    with pytest.raises(ValueError, match=r"skip_nonfinite=True\) needs the fields .*skipped_steps"):
        bn.batch_norm(X, plain, skip_nonfinite=True)
    with pytest.raises(TypeError, match=r"state\.skipped_steps must have dtype int32"):
        bn.batch_norm(X, guarded._replace(skipped_steps=np.zeros((), np.float32)), skip_nonfinite=True)
    with pytest.raises(TypeError, match="skip_nonfinite must be a Python bool"):
        bn.batch_norm(X, skip_nonfinite=1)


def test_the_guard_traces_whole_under_torch_compile():
    """No Python branch on values: the guard compiles as one graph (fullgraph=True)."""
    torch = pytest.importorskip("torch")
    from array_api_compat import torch as xp

    from bn_portable._tf._nonfinite import keep_state_unless_finite

    _, state = bn.batch_norm(torch.from_numpy(X), skip_nonfinite=True, zero_debias_moving_mean=True)
    _, updated = bn.batch_norm(
        torch.from_numpy(X2), state, skip_nonfinite=True, zero_debias_moving_mean=True
    )

    def guard(mean, variance):
        return keep_state_unless_finite(state, updated, mean, variance, xp)

    compiled = torch.compile(guard, fullgraph=True, backend="eager")
    finite = torch.ones(5)
    kept = compiled(finite * torch.nan, finite)
    moved = compiled(finite, finite)
    assert int(kept.skipped_steps) == 1 and int(moved.skipped_steps) == 0
    for field in ("moving_mean", "moving_variance", "moving_mean_biased", "local_step"):
        assert torch.equal(getattr(kept, field), getattr(state, field)), field
        assert torch.equal(getattr(moved, field), getattr(updated, field)), field


def test_batch_norm_with_the_option_runs_under_torch_compile():
    torch = pytest.importorskip("torch")

    def step(x, state):
        return bn.batch_norm(x, state, skip_nonfinite=True)

    _, state = bn.batch_norm(torch.from_numpy(X), skip_nonfinite=True)
    compiled = torch.compile(step, backend="eager")
    with _quiet():
        _, kept = compiled(torch.from_numpy(_bad(np.nan)), state)
    _, moved = compiled(torch.from_numpy(X2), state)
    assert int(kept.skipped_steps) == 1 and int(moved.skipped_steps) == 0
    assert torch.equal(kept.moving_mean, state.moving_mean)
    assert not torch.equal(moved.moving_mean, state.moving_mean)

"""The per-signature cache of checks and plans: reused only where it must give the same answer."""

from __future__ import annotations

import numpy as np
import pytest

import bn_portable as bn
from bn_portable import _normalize
from bn_portable._lib import _backends, _call_cache
from bn_portable._tf import _options, _plan

RNG = np.random.default_rng(20261201)


@pytest.fixture(autouse=True)
def _empty_cache():
    _call_cache.clear()
    yield
    _call_cache.clear()


def _count(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_a_repeated_layer_call_skips_the_checks(monkeypatch):
    x = RNG.normal(size=(8, 4)).astype(np.float32)
    _, state = bn.batch_norm(x, fused=True, scale=True)
    calls = _count(monkeypatch, _plan, "_prepare")
    first = bn.batch_norm(x, state, fused=True, scale=True)
    second = bn.batch_norm(x, state, fused=True, scale=True)
    assert len(calls) == 1
    np.testing.assert_array_equal(first[0], second[0])
    bn.batch_norm(x, state, fused=True, scale=True, is_training=False)  # other options
    bn.batch_norm(x[:4], state, fused=True, scale=True)  # another shape
    assert len(calls) == 3


def test_bad_input_after_a_cached_call_raises_as_before():
    x = RNG.normal(size=(8, 4)).astype(np.float32)
    _, state = bn.batch_norm(x, scale=True)
    bn.batch_norm(x, state, scale=True)
    with pytest.raises(TypeError, match=r"state\.gamma must have dtype float32"):
        bn.batch_norm(x, state._replace(gamma=state.gamma.astype(np.float64)), scale=True)
    with pytest.raises(ValueError, match=r"state\.beta must have shape"):
        bn.batch_norm(x, state._replace(beta=state.beta[:3]), scale=True)
    with pytest.raises(TypeError, match="center must be a Python bool"):
        bn.batch_norm(x, state, scale=True, center=1)
    with pytest.raises(TypeError, match="must be an array"):
        bn.batch_norm(x.tolist(), state, scale=True)
    with pytest.raises(TypeError, match="is_training must be a Python bool"):
        bn.fused_batch_norm(x.reshape(8, 1, 1, 4), state.gamma, state.beta, is_training=1)


def test_fused_batch_norm_checks_once_per_signature(monkeypatch):
    x = RNG.normal(size=(2, 3, 3, 4)).astype(np.float32)
    scale, offset = np.ones(4, np.float32), np.zeros(4, np.float32)
    calls = _count(monkeypatch, _normalize, "_check_fused_arguments")
    for _ in range(3):
        bn.fused_batch_norm(x, scale, offset)
    assert len(calls) == 1
    with pytest.raises(TypeError, match="scale must have dtype float32"):
        bn.fused_batch_norm(x, scale.astype(np.float64), offset)
    bn.fused_batch_norm(x, scale, offset, epsilon=1e-2)  # another epsilon: checked again
    assert len(calls) == 3


def test_arrays_without_a_complete_signature_are_always_checked(monkeypatch):
    x = np.ma.masked_array(RNG.normal(size=(8, 4)).astype(np.float32))
    assert _backends.metadata(x) is None
    assert _backends.metadata(np.ones(3), None) is not None
    options = _options.layer_options(
        decay=0.9, param_initializers={"beta": np.zeros(4)}, weighted=False
    )
    assert _call_cache.options_signature(options) is None  # arrays in the initializers


def test_torch_signature_includes_the_device():
    torch = pytest.importorskip("torch")
    x = torch.zeros(3)
    (entry,) = _backends.metadata(x)
    assert torch.device("cpu") in entry
    assert _backends.metadata(torch.nn.Parameter(x)) != _backends.metadata(x)


def test_concurrent_callers_evicting_each_other(monkeypatch):
    import threading

    monkeypatch.setattr(_call_cache, "CAPACITY", 4)
    _call_cache.clear()
    errors, wrong = [], []

    def caller(offset):
        try:
            for i in range(4000):
                key = ("stress", (i + offset) % 12)
                if _call_cache.remember(key, lambda key=key: key[1] * 10) != key[1] * 10:
                    wrong.append(key)
        except Exception as error:  # a race would surface here (KeyError on eviction)
            errors.append(error)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _call_cache.clear()
    assert errors == [] and wrong == []


def test_a_sparse_tensor_after_a_dense_one_is_refused_as_in_a_fresh_process():
    """The layout is metadata a check reads, so it is part of the cache's key."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(RNG.normal(size=(8, 4)).astype(np.float32))
    _, state = bn.batch_norm(x, scale=True)
    bn.batch_norm(x, state, scale=True)  # remembered for a dense x of this shape
    bn.fused_batch_norm(x.reshape(8, 1, 1, 4), state.gamma, state.beta)
    with pytest.raises(TypeError, match=r"x must be a dense \(strided\) tensor"):
        bn.batch_norm(x.to_sparse(), state, scale=True)
    with pytest.raises(TypeError, match=r"x must be a dense \(strided\) tensor"):
        bn.fused_batch_norm(x.reshape(8, 1, 1, 4).to_sparse(), state.gamma, state.beta)
    with pytest.raises(TypeError, match=r"state\.gamma must be a dense \(strided\) tensor"):
        bn.batch_norm(x, state._replace(gamma=state.gamma.to_sparse()), scale=True)


def test_a_masked_array_after_a_plain_one_is_refused_as_in_a_fresh_process():
    x = RNG.normal(size=(8, 4)).astype(np.float32)
    _, state = bn.batch_norm(x, scale=True)
    bn.batch_norm(x, state, scale=True)
    bn.fused_batch_norm(x.reshape(8, 1, 1, 4), state.gamma, state.beta)
    with pytest.raises(TypeError, match="x must be a plain dense array, got a NumPy masked array"):
        bn.batch_norm(np.ma.masked_array(x), state, scale=True)
    with pytest.raises(TypeError, match="x must be a plain dense array, got a NumPy masked array"):
        bn.fused_batch_norm(np.ma.masked_array(x.reshape(8, 1, 1, 4)), state.gamma, state.beta)
    with pytest.raises(TypeError, match=r"state\.moving_mean must be a plain dense array"):
        bn.batch_norm(x, state._replace(moving_mean=np.ma.masked_array(state.moving_mean)), scale=True)

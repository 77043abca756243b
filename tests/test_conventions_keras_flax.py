"""Keras 3's and Flax NNX's conventions beyond the goldens: inputs untouched, replicas with
uneven masks, gradients of the masked statistics, tracing, bad input, the examples."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bn_portable.conventions import flax_batch_norm, keras_batch_norm


def _data(seed: int = 0, shape=(8, 5, 3)):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 1.5 + 20.0).astype(np.float32)
    mask = rng.uniform(size=shape[:-1]) < 0.5
    mask[0] = False
    params = [rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32) for _ in range(4)]
    return x, mask, params


def _replicas(function, arguments):
    """``function(reducer, *arguments[r])`` on two threads summing through a barrier."""
    barrier, slots, results, errors = threading.Barrier(2, timeout=60), [None, None], [None, None], []

    def reducer(rank):
        def cross_replica_sum(array):
            slots[rank] = array
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        return cross_replica_sum

    def target(rank):
        try:
            results[rank] = function(reducer(rank), *arguments[rank])
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("training", [True, False])
def test_inputs_are_not_mutated(training):
    x, mask, (gamma, beta, mean, variance) = _data()
    copies = [a.copy() for a in (x, mask, gamma, beta, mean, variance)]
    keras_batch_norm(x, mean, variance, gamma, beta, training, mask=mask)
    flax_batch_norm(x, mean, variance, gamma, beta, not training, mask=np.broadcast_to(mask[..., None], x.shape))
    for before, after in zip(copies, (x, mask, gamma, beta, mean, variance)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("split", [3, 0])
def test_keras_replicas_with_uneven_masks_give_the_whole_batch(split):
    x, mask, (gamma, beta, mean, variance) = _data(1)
    mask[split:] = mask[split:] | (np.arange(mask.shape[1]) < 2)  # uneven counts
    whole = keras_batch_norm(x.astype(np.float64), mean, variance, gamma, beta, True, mask=mask)
    parts = _replicas(
        lambda reducer, xs, ms: keras_batch_norm(
            xs, mean, variance, gamma, beta, True, mask=ms, cross_replica_sum=reducer
        ),
        [(x[:split], mask[:split]), (x[split:], mask[split:])],
    )
    y = np.concatenate([parts[0][0], parts[1][0]])
    np.testing.assert_allclose(y, whole[0], rtol=2e-5, atol=2e-5)
    for part in parts:
        np.testing.assert_allclose(part[1], whole[1], rtol=1e-6)
        np.testing.assert_allclose(part[2], whole[2], rtol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_flax_replicas_average_the_replicas_means(fast):
    """Flax's pmean: each replica's masked mean weighs the same, whatever its count."""
    x, mask, (scale, bias, mean, var) = _data(2)
    x64 = x.astype(np.float64)
    mask = np.broadcast_to(mask[..., None], x.shape).copy()
    mask[:4] = False
    mask[1, 0] = True  # replica 0 counts one row, replica 1 many
    shards = [(x64[:4], mask[:4]), (x64[4:], mask[4:])]
    parts = _replicas(
        lambda reducer, xs, ms: flax_batch_norm(
            xs, mean, var, scale, bias, mask=ms, use_fast_variance=fast, cross_replica_sum=reducer
        ),
        shards,
    )
    local_means = [np.nanmean(np.where(m, s, np.nan), axis=(0, 1)) for s, m in shards]
    expected_mean = sum(local_means) / 2
    np.testing.assert_allclose(parts[0][1], 0.99 * mean.astype(np.float64) + 0.01 * expected_mean, rtol=1e-12)
    whole = flax_batch_norm(x64, mean, var, scale, bias, mask=mask, use_fast_variance=fast)
    assert not np.allclose(parts[0][1], whole[1], rtol=1e-9)  # not the global batch's mean
    np.testing.assert_array_equal(parts[0][1], parts[1][1])


def _masked_statistics_grad_check(function):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.standard_normal((6, 4, 3)) + 2.0, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(rng.uniform(size=(6, 4)) < 0.6)
    weights = [torch.tensor(rng.standard_normal(s), dtype=torch.float64) for s in ((6, 4, 3), (3,), (3,))]

    def loss(x):
        y, m, v = function(x, mask)
        return (y * weights[0]).sum() + (m * weights[1]).sum() + (v * weights[2]).sum()

    return torch, x, loss


def test_keras_masked_statistics_gradients_match_finite_differences():
    torch, x, loss = _masked_statistics_grad_check(
        lambda x, mask: keras_batch_norm(
            x, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
            training=True, mask=mask,
        )
    )
    # Keras computes in float32: the finite differences are taken with a wide step.
    assert torch.autograd.gradcheck(loss, (x,), eps=1e-2, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("fast", [True, False])
def test_flax_masked_statistics_gradients_match_finite_differences(fast):
    torch, x, loss = _masked_statistics_grad_check(
        lambda x, mask: flax_batch_norm(
            x, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
            mask=mask[..., None], use_fast_variance=fast,
        )
    )
    assert torch.autograd.gradcheck(loss, (x,))


def test_both_trace_under_jax_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, mask, (gamma, beta, mean, variance) = _data(4)
    args = [jnp.asarray(a) for a in (x, mean, variance, gamma, beta)]
    jmask = jnp.asarray(mask)
    keras = jax.jit(lambda *a: keras_batch_norm(*a, True, mask=jmask))(*args)
    np.testing.assert_allclose(np.asarray(keras[1]), keras_batch_norm(x, mean, variance, gamma, beta, True, mask=mask)[1], rtol=1e-6)
    full = jnp.broadcast_to(jmask[..., None], x.shape)
    flax = jax.jit(lambda *a: flax_batch_norm(*a, mask=full))(*args)
    assert flax[0].shape == x.shape


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_both_compile_with_torch_fullgraph():
    torch = pytest.importorskip("torch")
    x, mask, params = _data(5)
    tx, tm = torch.from_numpy(x), torch.from_numpy(mask)
    tp = [torch.from_numpy(p) for p in params]
    keras = torch.compile(lambda x, m: keras_batch_norm(x, tp[2], tp[3], tp[0], tp[1], True, mask=m), fullgraph=True,
                          backend="aot_eager")
    flax = torch.compile(lambda x, m: flax_batch_norm(x, tp[2], tp[3], tp[0], tp[1], mask=m[..., None]), fullgraph=True,
                         backend="aot_eager")
    eager_keras = keras_batch_norm(tx, tp[2], tp[3], tp[0], tp[1], True, mask=tm)
    for got, want in zip(keras(tx, tm), eager_keras):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert flax(tx, tm)[0].shape == tx.shape


_BAD = [
    (keras_batch_norm, {"axis": 3}, ValueError, "axis"),
    (keras_batch_norm, {"axis": 1.0}, TypeError, "axis"),
    (keras_batch_norm, {"mask": np.ones((8, 5, 3), bool)}, ValueError, "mask"),
    (keras_batch_norm, {"momentum": "0.9"}, TypeError, "momentum"),
    (keras_batch_norm, {"epsilon": -1.0}, ValueError, "epsilon"),
    (keras_batch_norm, {"training": 1}, TypeError, "training"),
    (keras_batch_norm, {"cross_replica_sum": 3}, TypeError, "cross_replica_sum"),
    (flax_batch_norm, {"mask": np.ones((8, 5, 3), np.float32)}, TypeError, "mask"),
    (flax_batch_norm, {"mask": np.ones((2, 5, 3), bool)}, ValueError, "mask"),
    (flax_batch_norm, {"axis": (1, 2)}, TypeError, "axis"),
    (flax_batch_norm, {"dtype": "int8"}, TypeError, "dtype"),
    (flax_batch_norm, {"use_fast_variance": None}, TypeError, "use_fast_variance"),
]


@pytest.mark.parametrize(("function", "change", "error", "name"), _BAD, ids=lambda v: str(v)[:30])
def test_bad_input_names_the_argument(function, change, error, name):
    x, _, (gamma, beta, mean, variance) = _data()
    with pytest.raises(error, match=name):
        function(x, mean, variance, gamma, beta, **change)


@pytest.mark.parametrize("function", [keras_batch_norm, flax_batch_norm])
def test_bad_parameters_name_the_argument(function):
    x, _, (gamma, beta, mean, variance) = _data()
    with pytest.raises(ValueError, match=r"mean|moving_mean"):
        function(x, mean[:2], variance, gamma, beta)
    with pytest.raises(TypeError, match="x"):
        function(x.astype(np.int32), mean, variance, gamma, beta)

"""The NumPy fast paths' threads: one per usable CPU by default, same bits for any count, errors surface."""

from __future__ import annotations

import inspect
import threading

import array_api_compat.numpy as NP  # the namespace the library hands its kernels
import numpy as np
import pytest

from bn_portable._native import _numpy as numpy_fast
from bn_portable._native import _threads
from bn_portable._native._registry import Kernel

EPSILON = 1e-3


@pytest.fixture
def small_blocks(tiny_numpy_blocks, monkeypatch):
    """Many blocks (and chunks) on a small input, every input shared among threads."""
    monkeypatch.setattr(tiny_numpy_blocks, "SMALLEST_SHARED_INPUT", 0)


def _kernel_outputs(x, channel):
    rng = np.random.default_rng(7)
    channels = x.shape[channel]
    scale, offset, mean = (rng.normal(size=channels).astype(np.float32) for _ in range(3))
    variance = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    axes = tuple(axis for axis in range(x.ndim) if axis != channel)
    shape = [1] * x.ndim
    shape[channel] = channels
    compute = np.float64 if x.dtype == np.float64 else np.float32
    widened = np.float32 if x.dtype == np.float16 else None
    dy = rng.normal(size=x.shape).astype(x.dtype)
    centre, a, b, c = (v.astype(compute).reshape(shape) for v in (mean, scale, offset, variance))
    outputs = [
        *numpy_fast.gradient_sums(dy, x, mean.astype(compute), channel, xp=NP),
        numpy_fast.gradient_input(dy, x, centre, a, b, c, None, xp=NP),
        # float16 is summed and normalized in float32 (the Keras layer's compute dtype).
        *numpy_fast.local_moments(x, axes, xp=NP, compute=widened),
        numpy_fast.normalize(
            x, mean.reshape(shape), variance.reshape(shape), None, None, EPSILON, xp=NP
        ),
        numpy_fast.normalize(
            x, mean.reshape(shape), variance.reshape(shape), None, None, EPSILON, xp=NP, compute=widened
        ),
    ]
    if x.dtype != np.float64:  # the fused kernels take float32 and float16
        outputs += [
            *numpy_fast.fused_training_core(x, scale, offset, EPSILON, channel, xp=NP)[:3],
            numpy_fast.fused_inference(x, scale, offset, mean, variance, EPSILON, channel, xp=NP),
        ]
    return outputs


@pytest.mark.parametrize(("shape", "channel"), [((6, 5, 7, 9), 3), ((6, 9, 7, 20), 1)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_results_do_not_depend_on_the_thread_count(small_blocks, monkeypatch, shape, channel, dtype):
    x = np.random.default_rng(3).normal(2.0, 3.0, size=shape).astype(dtype)
    results = {}
    for threads in ("1", "2", "5"):
        monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", threads)
        outputs = _kernel_outputs(x, channel)
        assert all(output is not NotImplemented for output in outputs)
        results[threads] = outputs
    for threads in ("2", "5"):
        for single, shared in zip(results["1"], results[threads]):
            np.testing.assert_array_equal(shared, single, strict=True)


def test_work_runs_in_several_threads_and_keeps_item_order():
    seen = set()

    def work(share):
        seen.add(threading.get_ident())
        return [item * 10 for item in share]

    assert _threads.in_shares(work, list(range(7)), 3) == [item * 10 for item in range(7)]
    assert len(seen) > 1


def test_an_error_in_any_share_is_raised_after_every_share_finished():
    finished = []

    def work(share):
        if 0 in share:
            raise RuntimeError("first share failed")
        finished.append(share)
        return []

    with pytest.raises(RuntimeError, match="first share failed"):
        _threads.in_shares(work, list(range(6)), 3)
    assert sorted(item for share in finished for item in share) == [2, 3, 4, 5]


@pytest.mark.parametrize("setting", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_count_setting_is_named(monkeypatch, setting):
    monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", setting)
    with pytest.raises(ValueError, match="BN_PORTABLE_NUM_THREADS must be a positive integer"):
        _threads.thread_count()


def test_thread_count_defaults_to_the_usable_cpus(monkeypatch):
    monkeypatch.delenv("BN_PORTABLE_NUM_THREADS", raising=False)
    assert _threads.thread_count() == _threads._usable_cpus() >= 1
    monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", " ")
    assert _threads.thread_count() == _threads._usable_cpus()
    monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", "3")
    assert _threads.thread_count() == 3


def test_one_thread_keeps_the_work_in_the_calling_thread(small_blocks, monkeypatch):
    submitted = []
    submit = _threads._submit
    monkeypatch.setattr(_threads, "_submit", lambda *args: submitted.append(1) or submit(*args))
    x = np.random.default_rng(4).normal(size=(6, 9, 7, 20)).astype(np.float32)
    monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", "1")
    assert all(output is not NotImplemented for output in _kernel_outputs(x, 1))
    assert not submitted
    monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", "2")
    _kernel_outputs(x, 1)
    assert submitted


#: Kernels NumPy's fast path leaves to the generic code: NumPy has no fused multiply-add,
#: which is all PyTorch's moving average gains; the layers' training steps are compositions
#: of kernels NumPy serves (one dispatch more: 0.93–1.02 of the time at 64×64).
NOT_SERVED = {Kernel.MOVE_TOWARD, Kernel.LAYER_TRAINING, Kernel.FUSED_LAYER_TRAINING}


def test_the_package_serves_every_kernel_with_xp_as_a_keyword():
    assert set(numpy_fast.KERNELS) == set(Kernel) - NOT_SERVED
    for kernel, function in numpy_fast.KERNELS.items():
        parameters = inspect.signature(function).parameters
        assert parameters["xp"].kind is inspect.Parameter.KEYWORD_ONLY, kernel
        assert kernel.value.startswith(f"{function.__name__}(")


def test_concurrent_callers_while_the_pool_grows(monkeypatch):
    """Several threads call at once while the shared pool keeps being replaced by a larger one.

    A pool that a caller had fetched but another caller shut down to grow it
    refused that caller's work ("cannot schedule new futures after shutdown").
    """
    callers, rounds, largest = 8, 6, 12
    errors, results = [], []
    start = threading.Barrier(callers)

    def work(share):
        return [item * 2 for item in share]

    def caller(index):
        try:
            start.wait()
            for _ in range(rounds):
                for threads in range(2, largest + 1):
                    items = list(range(threads + index))
                    if _threads.in_shares(work, items, threads) != [i * 2 for i in items]:
                        results.append("wrong result")
        except Exception as error:  # collected, asserted below
            errors.append(error)

    for _ in range(10):
        monkeypatch.setattr(_threads, "_pool", None)
        monkeypatch.setattr(_threads, "_pool_size", 0)
        workers = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert not errors, f"{len(errors)} calls failed, the first: {errors[0]!r}"
    assert not results


def test_eight_concurrent_callers_get_identical_results(small_blocks, monkeypatch):
    """Callers sharing the pool (and growing it) get the bits a lone caller gets."""
    import bn_portable as bn

    monkeypatch.setattr(_threads, "_pool", None)
    monkeypatch.setattr(_threads, "_pool_size", 0)
    x = np.random.default_rng(9).normal(3.0, 2.0, size=(6, 5, 7, 9)).astype(np.float32)
    dy = np.random.default_rng(10).normal(size=x.shape).astype(np.float32)

    def outputs():
        y, state, vjp = bn.batch_norm_vjp(x, scale=True)
        inference, _ = bn.batch_norm(x, state, scale=True, is_training=False)
        return [y, *(v for v in state if v is not None), *vjp(dy), inference]

    monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", "1")
    alone = outputs()
    monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", "6")
    seen, errors = [], []
    start = threading.Barrier(8)

    def caller():
        try:
            start.wait()
            for _ in range(10):
                seen.append(outputs())
        except Exception as error:  # collected, asserted below
            errors.append(error)

    submitted = []
    submit = _threads._submit
    monkeypatch.setattr(_threads, "_submit", lambda *args: submitted.append(1) or submit(*args))
    workers = [threading.Thread(target=caller) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors[0]
    assert len(seen) == 80
    assert submitted, "no call shared its work with the pool"
    for result in seen:
        for got, expected in zip(result, alone):
            np.testing.assert_array_equal(got, expected, strict=True)

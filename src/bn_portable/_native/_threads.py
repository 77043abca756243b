"""Worker threads for the NumPy fast paths: one per usable CPU unless told otherwise.

NumPy releases the GIL inside its ufunc loops, so cache-sized blocks of one
array can be processed by several Python threads at once. A handful of
long-lived threads do it for the inference, ``normalize``, moments and
backward kernels on large inputs; the training kernel stays on the calling
thread (on 2 CPU cores, sharing its blocks did not make it faster: its BLAS
sums, called from two threads at once, contend). ``BN_PORTABLE_NUM_THREADS=N``
sets the number, ``1`` keeps all the work in the calling thread.

Why on by default, measured on a 2-core machine at 32x64x56x56 (one process,
``python -c`` timing of ``fused_batch_norm`` and ``fused_batch_norm_grad``,
best of 7): with the second core idle, two threads took NCHW float32 inference
from 4.7 to 3.1 ms, the backward from 17.4 to 12.7 ms, and float16 inference
and backward from 29 to 15 ms and 67 to 35 ms, NHWC float32 inference from 4.3
to 2.8 ms (its backward stayed at 16 ms). Right after a matrix product
had woken BLAS's own threads (OpenBLAS keeps them spinning for a while), the
gain was gone and the cost a few per cent (backward 17.7 to 18.5 ms). Holding
BLAS to one thread around each call (``threadpoolctl``) did not recover the
gain and changes a process-wide setting other threads share, so the threads
are not coordinated with BLAS; where BLAS runs beside them all the time, set
``BN_PORTABLE_NUM_THREADS=1``.

Results never depend on the number of threads: the work is cut into items by
the input's shape alone, each item is computed whole by one thread, and
per-item results (partial sums) come back in item order to be combined in
that order.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import _settings

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def thread_count() -> int:
    """Threads the fast paths may use (``BN_PORTABLE_NUM_THREADS`` or the usable CPUs)."""
    count = _settings.num_threads_from_environment()
    return _usable_cpus() if count is None else count


@functools.cache
def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def in_shares(
    work: Callable[[Sequence[T]], list[Any] | None], items: Sequence[T], threads: int
) -> Any:
    """Run ``work`` on contiguous shares of ``items`` in up to ``threads`` threads.

    ``work(share)`` returns one result per item of its share (or None when it
    only writes into arrays); the results of all shares are returned in item
    order. The calling thread takes the first share; the call returns when
    every share is done, and re-raises the first error.
    """
    threads = max(1, min(threads, len(items)))
    if threads == 1:
        return work(items) or []
    shares = _split(items, threads)
    futures = _submit(work, shares[1:])
    try:
        first = work(shares[0]) or []
    finally:
        # Wait for every share, even after an error: none may still be
        # writing into the caller's arrays once this returns.
        for future in futures:
            future.exception()
    results = list(first)
    for future in futures:
        results.extend(future.result() or [])
    return results


def _split(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """``parts`` contiguous shares whose lengths differ by at most one."""
    size, extra = divmod(len(items), parts)
    shares, start = [], 0
    for part in range(parts):
        stop = start + size + (part < extra)
        shares.append(items[start:stop])
        start = stop
    return shares


def _submit(work: Callable[[Sequence[T]], Any], shares: Sequence[Sequence[T]]) -> list[Any]:
    """Futures of ``work(share)`` for each share, on a pool with a thread for each.

    The pool is grown (replaced by a larger one) when a call needs more
    threads. Submitting happens under the lock: another caller may shut the
    pool down to grow it, and a pool that is shut down refuses new work (work
    already submitted to it still runs to completion).
    """
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < len(shares):
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(len(shares), thread_name_prefix="bn_portable")
            _pool_size = len(shares)
        return [_pool.submit(work, share) for share in shares]


def _forget_pool_after_fork() -> None:
    # A forked child inherits the pool object but not its threads.
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)

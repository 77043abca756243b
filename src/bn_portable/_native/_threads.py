"""Worker threads for the NumPy fast paths: off unless asked for.

NumPy releases the GIL inside its ufunc loops, so cache-sized blocks of one
array can be processed by several Python threads at once. A handful of
long-lived threads can do it here, but only when ``BN_PORTABLE_NUM_THREADS``
asks for more than one: by default every kernel runs in the calling thread.

Why opt-in: these threads share the cores with BLAS's own threads (OpenBLAS
keeps them spinning for a while after each multi-threaded call) and with the
caller's other work, and nothing coordinates them. Measured on a shared
2-core machine (32x64x56x56 float32), two threads helped only while the other
core was idle and BLAS's threads asleep (NCHW inference 4.5 to 3.2 ms, NHWC
backward 15.5 to 11.6 ms); after a BLAS call they slowed NHWC inference from
4.0 to 6.0 ms and the backward from 14.9 to 18.2 ms, and with the other core
busy they gained nothing. Holding BLAS to one thread around each call
(``threadpoolctl``) did not recover the gain after the program's own matrix
products, and it changes a process-wide setting that other threads share.

Results never depend on the number of threads: the work is cut into items by
the input's shape alone, each item is computed whole by one thread, and
per-item results (partial sums) come back in item order to be combined in
that order.
"""

from __future__ import annotations

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
    """Threads the fast paths may use: ``BN_PORTABLE_NUM_THREADS``, or 1 (the calling thread)."""
    count = _settings.num_threads_from_environment()
    return 1 if count is None else count


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

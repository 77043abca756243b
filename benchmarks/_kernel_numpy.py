"""The NumPy implementations the kernel benchmark times, and the memory roof.

bn_portable on NumPy with its fast paths on, off and on one thread, the kernels
it runs called directly, the naive array-API composite, and a copy of the
input's bytes (the floor for any kernel that reads x and writes y).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from _kernel_cases import EPSILON, Case


def numpy_impls(case: Case, bn: Any) -> dict[str, Callable[[], Any] | str]:
    x, scale, offset, mean, variance = case.x, case.scale, case.offset, case.mean, case.variance
    fmt = case.layout
    out: dict[str, Callable[[], Any] | str] = {}

    def with_fast(enabled, function):
        def run():
            with bn.fast_paths(enabled):
                return function()

        return run

    if case.operation == "step":
        return {}  # autograd: torch only
    if case.operation == "train":
        call = lambda: bn.fused_batch_norm(x, scale, offset, epsilon=EPSILON, data_format=fmt)  # noqa: E731
    elif case.operation == "infer":
        call = lambda: bn.fused_batch_norm(  # noqa: E731
            x, scale, offset, mean, variance, epsilon=EPSILON, data_format=fmt, is_training=False
        )
    else:
        grad = getattr(bn, "fused_batch_norm_grad", None)
        if grad is None:
            return {"numpy fast": "bn_portable has no fused_batch_norm_grad yet"}
        call = lambda: grad(case.dy, x, scale, mean, variance, epsilon=EPSILON, data_format=fmt)  # noqa: E731
    out["numpy fast"] = with_fast(True, call)
    kernels = _numpy_kernels(case, bn)
    if kernels is not None:
        out["numpy kernels"] = kernels
    out["numpy fast 1t"] = _numpy_one_thread(with_fast(True, call))
    out["numpy generic"] = with_fast(False, call)
    out["numpy naive"] = naive_numpy(case)
    return out


def _numpy_kernels(case: Case, bn: Any) -> Callable[[], Any] | None:
    """The kernel ``numpy fast`` runs for the forward, called directly: what the
    public function costs without what is around it (validation, planning,
    dispatch, the Bessel factor). The fast path's kernel, or the generic one
    where the fast path hands the case back (small batches)."""
    fast = importlib.import_module("bn_portable._native._numpy")
    generic = importlib.import_module("bn_portable._kernels._normalize")
    xp = importlib.import_module("array_api_compat").array_namespace(case.x)
    x, scale, offset, mean, variance = case.x, case.scale, case.offset, case.mean, case.variance
    channel = case.channel
    if case.operation == "train":
        arguments = (x, scale, offset, EPSILON, channel)
        kernel, fallback = fast.fused_training_core, generic.fused_training_core.generic
    elif case.operation == "infer":
        arguments = (x, scale, offset, mean, variance, EPSILON, channel)
        kernel, fallback = fast.fused_inference, generic.fused_inference.generic
    else:
        return None
    if kernel(*arguments, xp=np) is NotImplemented:
        return lambda: fallback(*arguments, xp=xp)
    return lambda: kernel(*arguments, xp=np)


def _numpy_one_thread(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` with the NumPy fast paths' threads limited to the calling one."""

    def run():
        previous = os.environ.get("BN_PORTABLE_NUM_THREADS")
        os.environ["BN_PORTABLE_NUM_THREADS"] = "1"
        try:
            return call()
        finally:
            if previous is None:
                del os.environ["BN_PORTABLE_NUM_THREADS"]
            else:
                os.environ["BN_PORTABLE_NUM_THREADS"] = previous

    return run


def naive_numpy(case: Case) -> Callable[[], Any]:
    """The array-API composite a user would write: mean, var, subtract, multiply, add."""
    x, axes = case.x, case.axes
    scale, offset = case.broadcast(case.scale), case.broadcast(case.offset)
    eps = np.float32(EPSILON)

    if case.operation == "train":

        def run():
            x32 = x.astype(np.float32)
            mean = np.mean(x32, axis=axes, keepdims=True)
            var = np.var(x32, axis=axes, keepdims=True)
            return ((x32 - mean) * (scale / np.sqrt(var + eps)) + offset).astype(x.dtype)

    elif case.operation == "infer":
        mean, var = case.broadcast(case.mean), case.broadcast(case.variance)

        def run():
            return ((x.astype(np.float32) - mean) * (scale / np.sqrt(var + eps)) + offset).astype(
                x.dtype
            )

    else:
        dy = case.dy
        mean, var = case.broadcast(case.mean), case.broadcast(case.variance)

        def run():
            x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
            inv = 1 / np.sqrt(var + eps)
            xhat = (x32 - mean) * inv
            dscale = np.sum(dy32 * xhat, axis=axes)
            doffset = np.sum(dy32, axis=axes)
            dx = (
                scale
                * inv
                * (
                    dy32
                    - np.mean(dy32, axis=axes, keepdims=True)
                    - xhat * np.mean(dy32 * xhat, axis=axes, keepdims=True)
                )
            )
            return dx.astype(x.dtype), dscale, doffset

    return run


def roof_impl(case: Case) -> Callable[[], Any]:
    destination = np.empty_like(case.x)
    return lambda: np.copyto(destination, case.x)

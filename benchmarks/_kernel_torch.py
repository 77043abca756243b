"""The PyTorch implementations the kernel benchmark times.

bn_portable on PyTorch against PyTorch's own kernels (``F.batch_norm`` and
``native_batch_norm_backward``, on its default threads and on one), and the
training step with autograd, eager and under ``torch.compile``. PyTorch is
passed in (it may be absent), so this module imports it nowhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _kernel_cases import EPSILON, MLP_SHAPES, Case


def torch_impls(case: Case, bn: Any, torch: Any) -> dict[str, Callable[[], Any] | str]:
    fmt = case.layout
    tx = torch.from_numpy(case.x)
    tdy = torch.from_numpy(case.dy)
    ts, to, tm, tv = (
        torch.from_numpy(v) for v in (case.scale, case.offset, case.mean, case.variance)
    )
    out: dict[str, Callable[[], Any] | str] = {}
    # Native: channels-second; NHWC is the same memory as channels_last NCHW.
    native_x = tx if case.channel == 1 else tx.movedim(-1, 1)
    native_dy = tdy if case.channel == 1 else tdy.movedim(-1, 1)
    if case.shape_name == "64x64":  # the rank-2 batch: PyTorch takes it as (N, C)
        native_x = tx.reshape(case.shape[0], case.channels)
        native_dy = tdy.reshape(case.shape[0], case.channels)
    running_mean, running_var = tm.clone(), tv.clone()
    functional = torch.nn.functional.batch_norm

    if case.operation == "step":
        return step_impls(case, bn, torch, native_x, native_dy)
    if case.operation == "train":
        out["torch fast"] = lambda: bn.fused_batch_norm(
            tx, ts, to, epsilon=EPSILON, data_format=fmt
        )
        out["torch native"] = lambda: functional(
            native_x, running_mean, running_var, ts, to, True, 0.1, EPSILON
        )
    elif case.operation == "infer":
        out["torch fast"] = lambda: bn.fused_batch_norm(
            tx, ts, to, tm, tv, epsilon=EPSILON, data_format=fmt, is_training=False
        )
        out["torch native"] = lambda: functional(native_x, tm, tv, ts, to, False, 0.1, EPSILON)
    else:
        grad = getattr(bn, "fused_batch_norm_grad", None)
        if grad is None:
            out["torch fast"] = "bn_portable has no fused_batch_norm_grad yet"
        else:
            out["torch fast"] = lambda: grad(tdy, tx, ts, tm, tv, epsilon=EPSILON, data_format=fmt)
        inverse_std = torch.rsqrt(tv + EPSILON)
        out["torch native"] = lambda: torch.ops.aten.native_batch_norm_backward(
            native_dy, native_x, ts, None, None, tm, inverse_std, True, EPSILON, [True, True, True]
        )
    out["torch native 1t"] = _one_thread(torch, out["torch native"])
    return out


def step_impls(case: Case, bn: Any, torch: Any, native_x: Any, native_dy: Any) -> dict[str, Any]:
    """One training step with autograd: the layer forward, then backward to x, γ and β.

    bn_portable runs ``batch_norm(fused=True, scale=True)`` (MLP batches as
    rank 2, as a model passes them); the native step is ``F.batch_norm`` in
    training mode on the same memory. ``torch compiled`` / ``torch native
    compiled``: the same two step functions under ``torch.compile`` (default
    backend, float32 only: the compile time is not timed).
    """
    fmt = case.layout
    mlp = case.shape_name in MLP_SHAPES
    x = torch.from_numpy(case.x)
    dy = torch.from_numpy(case.dy)
    if mlp:
        x, dy = x.reshape(case.shape[0], case.channels), dy.reshape(case.shape[0], case.channels)
        fmt = "NHWC"  # rank 2: the channels are the last axis either way
    x.requires_grad_(True)
    native_x = native_x.detach().clone().requires_grad_(True) if not mlp else x
    native_dy = native_dy if not mlp else dy
    _, state = bn.batch_norm(x.detach(), None, fused=True, scale=True, data_format=fmt)
    gamma = state.gamma.clone().requires_grad_(True)
    beta = state.beta.clone().requires_grad_(True)
    state = state._replace(gamma=gamma, beta=beta)
    running_mean = torch.zeros(case.channels)
    running_var = torch.ones(case.channels)
    functional = torch.nn.functional.batch_norm

    def portable_step(x, state, dy):
        y, new_state = bn.batch_norm(x, state, fused=True, scale=True, data_format=fmt)
        y.backward(dy)
        return new_state

    def native_step(x, gamma, beta, dy):
        y = functional(x, running_mean, running_var, gamma, beta, True, 0.001, EPSILON)
        y.backward(dy)

    out: dict[str, Any] = {
        "torch fast": lambda: portable_step(x, state, dy),
        "torch native": lambda: native_step(native_x, gamma, beta, native_dy),
    }
    if case.dtype == "float32":
        # Each case compiles afresh, for its shape alone, as a model with one layer
        # shape would: the step functions' code is shared by every case, and
        # torch.compile keeps at most 8 graphs per code (then runs it eagerly) and
        # makes a dimension symbolic once it has seen two sizes of it.
        torch._dynamo.reset()
        compiled_portable = torch.compile(portable_step)
        compiled_native = torch.compile(native_step)
        out["torch compiled"] = lambda: compiled_portable(x, state, dy)
        out["torch native compiled"] = lambda: compiled_native(native_x, gamma, beta, native_dy)
    return out


def _one_thread(torch: Any, call: Callable[[], Any]) -> Callable[[], Any]:
    def run():
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return call()
        finally:
            torch.set_num_threads(previous)

    return run

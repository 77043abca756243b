"""Batch-normalization timings: bn_portable on each backend against native kernels.

Usage::

    python benchmarks/bench.py [--quick] [--out benchmarks/results/cpu.json]

Every implementation of one case (operation × shape × layout × dtype) is timed
in the same run, interleaved round-robin (one call of each, then the next
round), and summarised by the median of the rounds, so that a noisy, shared
machine slows all of them alike; ratios are taken against PyTorch's native
kernel from the same rounds. The JSON holds the machine, the library
versions, every median (and quartiles), the ratios and the peak extra memory
of the NumPy training kernel; PNG plots are written next to it, and
``benchmarks/report.py`` renders the Markdown tables from the JSON.

Implementations (absent ones are recorded with the reason):

- ``numpy fast`` / ``numpy generic``: bn_portable on NumPy, fast paths on / off;
  ``numpy fast 1t`` the fast paths with ``BN_PORTABLE_NUM_THREADS=1``;
- ``torch fast``: bn_portable on PyTorch (fast paths on);
- ``torch native``: ``torch.nn.functional.batch_norm`` (channels-last memory
  format for NHWC), or ``native_batch_norm_backward`` for the backward pass,
  with PyTorch's default thread count; ``torch native 1t`` the same on one
  thread (a one-thread kernel is not thrown off when another process holds
  the other core);
- ``numpy naive``: the array-API composite (mean, var, subtract, multiply, add);
- ``tensorflow``: TensorFlow's fused op, when TensorFlow is importable (``nox -s
  bench_tensorflow`` runs the harness in TensorFlow's environment, NumPy < 2);
- ``jax fast`` / ``jax naive``: bn_portable under ``jax.jit`` and the naive
  ``jax.numpy`` composite under ``jax.jit``;
- ``memory roof``: a copy of the input's bytes into a preallocated output
  (one NumPy thread), the floor for any kernel that reads x and writes y.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _timing import load_average, machine_info, optional, peak_extra_memory, time_case

HERE = Path(__file__).resolve().parent
EPSILON = 1e-3

#: (name, NCHW shape, NHWC shape); the rank-2 MLP batches (N×C) run the fused
#: op as their rank-4 twins (N, C, 1, 1) and (N, 1, 1, C), TensorFlow's own
#: reshape for the fused kernel, and the training step as rank 2 itself.
SHAPES = [
    ("64x64", (64, 64, 1, 1), (64, 1, 1, 64)),
    ("256x512", (256, 512, 1, 1), (256, 1, 1, 512)),
    ("128x1024", (128, 1024, 1, 1), (128, 1, 1, 1024)),
    ("8x32x16x16", (8, 32, 16, 16), (8, 16, 16, 32)),
    ("16x64x28x28", (16, 64, 28, 28), (16, 28, 28, 64)),
    ("32x64x56x56", (32, 64, 56, 56), (32, 56, 56, 64)),
]
MLP_SHAPES = ("64x64", "256x512", "128x1024")
QUICK_SHAPES = ("64x64", "256x512", "8x32x16x16", "32x64x56x56")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16")
#: ``step``: the layer's forward and backward with autograd (torch only), eager
#: and under ``torch.compile`` (float32).
OPERATIONS = ("train", "infer", "backward", "step")
REFERENCE = "torch native"
TARGET_SHAPE = "32x64x56x56"

# ---------------------------------------------------------------------------
# Implementations
# ---------------------------------------------------------------------------


class Case:
    """One operation on one input: the data every implementation shares."""

    def __init__(self, operation: str, shape_name: str, layout: str, dtype: str, shape: tuple):
        self.operation, self.shape_name, self.layout, self.dtype = (
            operation,
            shape_name,
            layout,
            dtype,
        )
        self.shape = shape
        self.channel = 1 if layout == "NCHW" else len(shape) - 1
        self.channels = shape[self.channel]
        self.axes = tuple(a for a in range(len(shape)) if a != self.channel)
        rng = np.random.default_rng(0)
        self.x = rng.normal(0.5, 1.5, size=shape).astype(dtype)
        self.dy = rng.normal(0.0, 1.0, size=shape).astype(dtype)
        self.scale = rng.uniform(0.5, 1.5, self.channels).astype(np.float32)
        self.offset = rng.normal(0.0, 1.0, self.channels).astype(np.float32)
        x64 = self.x.astype(np.float64)
        self.mean = x64.mean(axis=self.axes).astype(np.float32)
        self.variance = x64.var(axis=self.axes).astype(np.float32)

    @property
    def key(self) -> str:
        return f"{self.operation}/{self.shape_name}/{self.layout}/{self.dtype}"

    def broadcast(self, vector, rank=None):
        rank = rank or len(self.shape)
        shape = [1] * rank
        shape[self.channel] = -1
        return vector.reshape(shape)


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


def tensorflow_impls(case: Case, tf: Any) -> dict[str, Callable[[], Any] | str]:
    if case.operation == "step":
        return {}
    fmt = case.layout
    tx = tf.constant(case.x)
    tdy = tf.constant(case.dy)
    ts, to, tm, tv = (tf.constant(v) for v in (case.scale, case.offset, case.mean, case.variance))
    empty = tf.constant([], dtype=tf.float32)
    if case.operation in ("train", "infer"):
        training = case.operation == "train"
        statistics = (empty, empty) if training else (tm, tv)
        function = tf.function(
            lambda: tf.raw_ops.FusedBatchNormV3(
                x=tx,
                scale=ts,
                offset=to,
                mean=statistics[0],
                variance=statistics[1],
                epsilon=EPSILON,
                data_format=fmt,
                is_training=training,
            )[0]
        )
    else:
        function = tf.function(
            lambda: tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=tdy,
                x=tx,
                scale=ts,
                reserve_space_1=tm,
                reserve_space_2=tv,
                reserve_space_3=tv,
                epsilon=EPSILON,
                data_format=fmt,
                is_training=True,
            )[:3]
        )
    return {"tensorflow": lambda: [t.numpy() for t in tf.nest.flatten(function())]}


def jax_impls(case: Case, bn: Any, jax: Any) -> dict[str, Callable[[], Any] | str]:
    if case.operation == "step":
        return {}
    jnp = jax.numpy
    fmt, axes = case.layout, case.axes
    jx, jdy = jnp.asarray(case.x), jnp.asarray(case.dy)
    js, jo, jm, jv = (jnp.asarray(v) for v in (case.scale, case.offset, case.mean, case.variance))
    eps = np.float32(EPSILON)
    shape = [1] * len(case.shape)
    shape[case.channel] = -1
    out: dict[str, Callable[[], Any] | str] = {}
    if case.operation == "train":
        fast = jax.jit(
            lambda x, s, o: bn.fused_batch_norm(x, s, o, epsilon=EPSILON, data_format=fmt)
        )

        def naive(x, s, o):
            x32 = x.astype(jnp.float32)
            mean = jnp.mean(x32, axis=axes, keepdims=True)
            var = jnp.var(x32, axis=axes, keepdims=True)
            return (
                (x32 - mean) * (s.reshape(shape) / jnp.sqrt(var + eps)) + o.reshape(shape)
            ).astype(x.dtype)

        args = (jx, js, jo)
    elif case.operation == "infer":
        fast = jax.jit(
            lambda x, s, o, m, v: bn.fused_batch_norm(
                x, s, o, m, v, epsilon=EPSILON, data_format=fmt, is_training=False
            )
        )

        def naive(x, s, o, m, v):
            factor = s.reshape(shape) / jnp.sqrt(v.reshape(shape) + eps)
            return ((x.astype(jnp.float32) - m.reshape(shape)) * factor + o.reshape(shape)).astype(
                x.dtype
            )

        args = (jx, js, jo, jm, jv)
    else:
        grad = getattr(bn, "fused_batch_norm_grad", None)
        if grad is None:
            return {"jax fast": "bn_portable has no fused_batch_norm_grad yet"}
        fast = jax.jit(
            lambda dy, x, s, m, v: grad(dy, x, s, m, v, epsilon=EPSILON, data_format=fmt)
        )

        def naive(dy, x, s, m, v):
            x32, dy32 = x.astype(jnp.float32), dy.astype(jnp.float32)
            inv = 1 / jnp.sqrt(v.reshape(shape) + eps)
            xhat = (x32 - m.reshape(shape)) * inv
            dx = (
                s.reshape(shape)
                * inv
                * (
                    dy32
                    - jnp.mean(dy32, axis=axes, keepdims=True)
                    - xhat * jnp.mean(dy32 * xhat, axis=axes, keepdims=True)
                )
            )
            return dx.astype(x.dtype), jnp.sum(dy32 * xhat, axis=axes), jnp.sum(dy32, axis=axes)

        args = (jdy, jx, js, jm, jv)
    naive_jit = jax.jit(naive)
    out["jax fast"] = lambda: jax.block_until_ready(fast(*args))
    out["jax naive"] = lambda: jax.block_until_ready(naive_jit(*args))
    return out


def roof_impl(case: Case) -> Callable[[], Any]:
    destination = np.empty_like(case.x)
    return lambda: np.copyto(destination, case.x)


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and rounds")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu.json")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds of sleep before each implementation's calls (lets other libraries' threads "
        "go idle; on a virtual machine it also lets idle cores sleep, which slows "
        "multi-threaded kernels: off by default)",
    )
    parser.add_argument("--inner", type=int, default=3, help="calls per round; the quickest counts")
    parser.add_argument("--shapes", nargs="+", default=None, help="only these shape names")
    parser.add_argument("--operations", nargs="+", default=None, choices=OPERATIONS)
    args = parser.parse_args(argv)

    from tqdm import tqdm

    import bn_portable as bn

    torch, torch_missing = optional("torch")
    if torch is not None and args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    jax, jax_missing = optional("jax")
    tf, tf_missing = optional("tensorflow")
    if jax is not None:
        jax.config.update("jax_platforms", "cpu")
    rounds = args.rounds or (7 if args.quick else 15)
    warmup = 2
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK_SHAPES]
    if args.shapes:
        shapes = [s for s in SHAPES if s[0] in args.shapes]
    has_backward = hasattr(bn, "fused_batch_norm_grad") and hasattr(bn, "batch_norm_vjp")
    operations = [op for op in OPERATIONS if op != "backward" or has_backward]
    if args.operations:
        operations = [op for op in operations if op in args.operations]
    notes = []
    if not has_backward:
        notes.append(
            "backward skipped: bn_portable.fused_batch_norm_grad / batch_norm_vjp are not available"
        )
        print(notes[-1], file=sys.stderr)

    absent = {
        "tensorflow": tf_missing or None,
        "torch": torch_missing or None,
        "jax": jax_missing or None,
    }
    info = machine_info(torch)
    # The target shape first: its figures are the ones the targets are judged
    # on, and a run started on a quiet machine is quietest at its start.
    shapes.sort(key=lambda s: s[0] != TARGET_SHAPE)
    cases = [
        Case(op, name, layout, dtype, nchw if layout == "NCHW" else nhwc)
        for name, nchw, nhwc in shapes
        for op in operations
        for layout in LAYOUTS
        for dtype in DTYPES
    ]
    rng = random.Random(0)
    records = []
    progress = tqdm(total=len(cases) * rounds, desc="bench", unit="round")
    for case in cases:
        impls: dict[str, Any] = {}
        impls.update(numpy_impls(case, bn))
        if torch is not None:
            impls.update(torch_impls(case, bn, torch))
        else:
            impls["torch native"] = absent["torch"]
        if tf is not None:
            impls.update(tensorflow_impls(case, tf))
        else:
            impls["tensorflow"] = absent["tensorflow"]
        if jax is not None:
            impls.update(jax_impls(case, bn, jax))
        else:
            impls["jax fast"] = absent["jax"]
        impls["memory roof"] = roof_impl(case)
        callables = {k: v for k, v in impls.items() if callable(v)}
        skipped = {k: v for k, v in impls.items() if not callable(v)}
        progress.set_postfix_str(case.key)
        results = time_case(
            callables,
            rounds,
            warmup,
            rng,
            lambda: progress.update(1),
            settle=args.settle,
            inner=args.inner,
        )
        for name, reason in skipped.items():
            results[name] = {"skipped": reason}
        reference = results.get(REFERENCE, {}).get("median_ms")
        for result in results.values():
            if reference and "median_ms" in result:
                result["ratio_vs_torch_native"] = result["median_ms"] / reference
        record = {
            "load_average_1min": (load_average() or [None])[0],
            "operation": case.operation,
            "shape_name": case.shape_name,
            "shape": list(case.shape),
            "layout": case.layout,
            "dtype": case.dtype,
            "input_bytes": int(case.x.nbytes),
            "results": results,
        }
        if case.operation == "train":
            record["peak_extra_memory_vs_input"] = {
                name: peak_extra_memory(impls[name], case.x.nbytes)
                for name in ("numpy fast", "numpy generic", "numpy naive")
                if callable(impls.get(name))
            }
        records.append(record)
    progress.close()
    order = [name for name, _, _ in SHAPES]
    records.sort(key=lambda record: order.index(record["shape_name"]))  # stable: op, layout, dtype
    info["load_average_end"] = load_average()
    payload = {
        "schema": 1,
        "quick": args.quick,
        "rounds": rounds,
        "warmup": warmup,
        "settle_s": args.settle,
        "calls_per_round": args.inner,
        "reference": REFERENCE,
        "target_shape": TARGET_SHAPE,
        "machine": info,
        "absent": {k: v for k, v in absent.items() if v},
        "notes": notes,
        "cases": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    print(f"wrote {args.out}")
    if not args.no_plots:
        for path in plot(payload, args.out):
            print(f"wrote {path}")
    summarise(payload)
    return 0


# ---------------------------------------------------------------------------
# Plots and a terminal summary
# ---------------------------------------------------------------------------

PLOTTED = [
    "numpy fast",
    "numpy fast 1t",
    "numpy generic",
    "numpy naive",
    "torch fast",
    "torch native 1t",
    "jax fast",
    "jax naive",
    "tensorflow",
    "memory roof",
]


def plot(payload: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    operations = sorted({c["operation"] for c in payload["cases"]}, key=OPERATIONS.index)
    for operation in operations:
        figure, panels = plt.subplots(2, 2, figsize=(13, 8), sharey=True)
        for row, dtype in enumerate(DTYPES):
            for column, layout in enumerate(LAYOUTS):
                axis = panels[row][column]
                cases = [
                    c
                    for c in payload["cases"]
                    if c["operation"] == operation and c["dtype"] == dtype and c["layout"] == layout
                ]
                names = [
                    n
                    for n in PLOTTED
                    if any("ratio_vs_torch_native" in c["results"].get(n, {}) for c in cases)
                ]
                width = 0.8 / max(1, len(names))
                for index, name in enumerate(names):
                    ratios = [
                        c["results"].get(name, {}).get("ratio_vs_torch_native", np.nan)
                        for c in cases
                    ]
                    positions = np.arange(len(cases)) + index * width
                    axis.bar(positions, ratios, width, label=name)
                axis.axhline(1.0, color="black", linewidth=0.8)
                axis.set_yscale("log")
                axis.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
                axis.set_xticklabels([c["shape_name"] for c in cases], fontsize=8)
                axis.set_title(f"{operation} · {layout} · {dtype}", fontsize=10)
                if column == 0:
                    axis.set_ylabel("time / torch native (log)")
        handles, labels = panels[0][0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8)
        figure.suptitle(
            f"{payload['machine']['cpu_model']}, {payload['machine']['cpu_cores']} CPU cores — "
            "median time relative to PyTorch's native kernel (lower is faster)",
            fontsize=10,
            y=0.02,
        )
        figure.tight_layout(rect=(0, 0.04, 1, 0.94))
        path = out.with_name(f"{out.stem}_{operation}.png")
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    # Peak memory of the training forward.
    cases = [c for c in payload["cases"] if "peak_extra_memory_vs_input" in c]
    if cases:
        figure, axis = plt.subplots(figsize=(12, 5))
        names = ["numpy fast", "numpy generic", "numpy naive"]
        width = 0.8 / len(names)
        labels = [f"{c['shape_name']} {c['layout']} {c['dtype']}" for c in cases]
        for index, name in enumerate(names):
            values = [c["peak_extra_memory_vs_input"].get(name, np.nan) for c in cases]
            axis.bar(np.arange(len(cases)) + index * width, values, width, label=name)
        axis.axhline(1.25, color="black", linewidth=0.8, linestyle="--", label="target 1.25×")
        axis.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
        axis.set_xticklabels(labels, fontsize=7, rotation=60, ha="right")
        axis.set_ylabel("peak extra memory / input bytes")
        axis.set_title("NumPy training forward: peak extra memory (output included)", fontsize=10)
        axis.legend(fontsize=8)
        figure.tight_layout()
        path = out.with_name(f"{out.stem}_memory.png")
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def summarise(payload: dict) -> None:
    print(f"\nmedian ms (ratio vs {REFERENCE}) at {TARGET_SHAPE}, float32:")
    for case in payload["cases"]:
        if case["shape_name"] != TARGET_SHAPE or case["dtype"] != "float32":
            continue
        cells = []
        for name, result in case["results"].items():
            if "median_ms" in result:
                ratio = result.get("ratio_vs_torch_native")
                cells.append(
                    f"{name} {result['median_ms']:.2f}" + (f" ({ratio:.2f}x)" if ratio else "")
                )
        print(f"  {case['operation']:8s} {case['layout']}: " + "; ".join(cells))
    for note in payload["notes"]:
        print("note:", note)
    for name, reason in payload["absent"].items():
        print(f"{name}: {reason}")


if __name__ == "__main__":
    raise SystemExit(main())

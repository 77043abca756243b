"""An earlier revision of bn_portable against the working tree, side by side in one process.

Usage::

    python benchmarks/compare_versions.py REVISION [--backend torch|numpy|jax]
        [--dtypes float32,float16] [--layouts NCHW,NHWC,CL] [--shape 32,64,56,56]
        [--calls N] [--paths fused,non-fused,renorm,zero-debias] [--rounds R]

The package at ``REVISION`` (``git archive``) is imported as ``bn_old`` beside
the installed ``bn_portable`` (the package imports itself relatively, so a
renamed copy works), and ``batch_norm`` is timed on both, fused and not, in
training and inference, and (torch) the training step of the PyTorch module
(forward and backward), alternating: the quickest of three alternating repeats
of the best of five calls each; with ``--calls N``, of the mean over N calls
(for small shapes, where one call takes microseconds). ``CL`` is NCHW in channels-last memory (a PyTorch model's
channels-last tensors). Prints new/old per case: a change is judged on these
ratios, which a shared machine disturbs far less than separate runs. With
``--rounds R``, each case is instead R rounds of ``--calls`` calls on each side,
the side going first alternating, and the median of the R ratios is printed with
its quartiles: steadier on a noisy machine. ``--paths`` adds ``renorm`` and
``zero-debias`` (non-fused). Outside ``step``, each case also says whether y and the
new state are the same bits on both sides. On ``jax`` each side is its own ``jax.jit``
program of the call (compiled before the timing).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import bn_portable as bn

ROOT = Path(__file__).resolve().parent.parent


def _old_package(revision: str, folder: Path) -> Any:
    archive = subprocess.run(
        ["git", "archive", revision, "src/bn_portable"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "src" / "bn_portable").rename(folder / "bn_old")
    sys.path.insert(0, str(folder))
    return importlib.import_module("bn_old")


def _best(call: Any, calls: int = 5, per_timing: int = 1) -> float:
    """ms per call: the best of ``calls`` timings, each the mean over ``per_timing`` calls."""
    call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        for _ in range(per_timing):
            call()
        times.append((time.perf_counter() - start) / per_timing)
    return min(times) * 1e3


def _median_ratio(old: Any, new: Any, rounds: int, calls: int) -> tuple[float, float, float]:
    """Median and quartiles of new/old over ``rounds`` rounds, the side timed first alternating."""
    old(), new()
    ratios = []
    for round_ in range(rounds):
        seconds = {}
        for name, call in ((("old", old), ("new", new)) if round_ % 2 else (("new", new), ("old", old))):
            start = time.perf_counter()
            for _ in range(calls):
                call()
            seconds[name] = time.perf_counter() - start
        ratios.append(seconds["new"] / seconds["old"])
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return median, q1, q3


def _same_bits(old: Any, new: Any) -> bool:
    """Whether two ``batch_norm`` results hold the same bits (y and every state field)."""
    (y_old, state_old), (y_new, state_new) = old(), new()
    pairs = [(y_old, y_new), *zip(state_old, state_new, strict=True)]
    return all((a is None) == (b is None) and (a is None or _bits(a) == _bits(b)) for a, b in pairs)


def _bits(array: Any) -> tuple[Any, ...]:
    """Shape, dtype and bytes (NaN payloads included; bfloat16, which NumPy lacks, as its bytes)."""
    if hasattr(array, "detach"):
        import torch  # an array with .detach() is a tensor: torch is there

        tensor = array.detach().cpu()
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return tuple(tensor.shape), str(tensor.dtype), data
    values = np.ascontiguousarray(array)
    return values.shape, str(values.dtype), values.tobytes()


#: The layer paths ``--paths`` names, as ``batch_norm`` options.
PATHS = {
    "fused": {"fused": True},
    "non-fused": {"fused": False},
    "renorm": {"fused": False, "renorm": True},
    "zero-debias": {"fused": False, "zero_debias_moving_mean": True},
}


def _state(library: Any, x: Any, data_format: str, vectors: list[Any], path_options: dict[str, Any]) -> Any:
    """The state a first training call of the path creates (its variables, in their dtype),
    with gamma, beta and the moving statistics taken from ``vectors``."""
    created = library.batch_norm(x, None, scale=True, data_format=data_format, **path_options)[1]
    dtype = created.moving_mean.dtype
    gamma, beta, mean, variance = (
        v.to(dtype) if hasattr(v, "detach") else v.astype(dtype) for v in vectors
    )
    return created._replace(gamma=gamma, beta=beta, moving_mean=mean, moving_variance=variance)


def _module_step(library: Any, state: Any, x: Any, data_format: str, fused: bool) -> Any:
    """A training step of ``library``'s PyTorch module: forward, then the gradients."""
    import torch

    module = importlib.import_module(library.__name__ + ".torch").BatchNorm.from_state(
        state, data_format=data_format, scale=True, fused=fused
    )
    x = x.detach().requires_grad_()
    dy = torch.randn_like(x)

    def step() -> Any:
        return torch.autograd.grad(module(x), (x, module.gamma, module.beta), dy)

    return step


def _input(shape: tuple[int, ...], dtype: str, layout: str, backend: str) -> tuple[Any, str]:
    import torch

    x = (torch.randn(*shape) * 3 + 1).to(getattr(torch, dtype))
    if x.ndim == 2:  # an MLP's batch: channels last whatever the layout
        layout = "2D"
    elif layout == "NHWC":
        x = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    elif layout == "CL":
        x = x.contiguous(memory_format=torch.channels_last)
    data_format = "NCHW" if layout in ("NCHW", "CL") else "NHWC"
    if backend == "numpy":
        return np.ascontiguousarray(x.float().numpy()).astype(dtype), data_format
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(x.float().numpy(), dtype=dtype), data_format
    return x, data_format


def _vectors(channels: int, backend: str) -> list[Any]:
    """gamma, beta, moving mean and moving variance (float32) in the backend's arrays."""
    import torch

    vectors = [torch.rand(channels) + 0.5, torch.randn(channels), torch.randn(channels), torch.rand(channels) + 0.5]
    if backend == "numpy":
        return [v.numpy() for v in vectors]
    if backend == "jax":
        import jax.numpy as jnp

        return [jnp.asarray(v.numpy()) for v in vectors]
    return vectors


def _forward(library: Any, state: Any, x: Any, options: dict[str, Any], backend: str) -> Any:
    """``library.batch_norm`` of x and state as a call; on JAX a compiled program, awaited."""
    if backend != "jax":
        return lambda: library.batch_norm(x, state, scale=True, **options)
    import jax

    program = jax.jit(lambda x, state: library.batch_norm(x, state, scale=True, **options))
    return lambda: jax.block_until_ready(program(x, state))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision")
    parser.add_argument("--backend", default="torch", choices=["torch", "numpy", "jax"])
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--layouts", default="NCHW,NHWC")
    parser.add_argument("--shape", default="32,64,56,56")
    parser.add_argument("--calls", type=int, default=1, help="calls per timing (small shapes: 200)")
    parser.add_argument("--paths", default="fused,non-fused", help=f"some of {','.join(PATHS)}")
    parser.add_argument("--rounds", type=int, default=0, help="median of this many alternating rounds")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(0)
    shape = tuple(int(n) for n in args.shape.split(","))
    channels = shape[1]
    with tempfile.TemporaryDirectory() as folder:
        old = _old_package(args.revision, Path(folder))
        for dtype in args.dtypes.split(","):
            for layout in args.layouts.split(","):
                x, data_format = _input(shape, dtype, layout, args.backend)
                vectors = _vectors(channels, args.backend)
                modes = ("train", "infer", "step") if args.backend == "torch" else ("train", "infer")
                for mode in modes:
                    for path in args.paths.split(","):
                        path_options = PATHS[path]
                        if mode == "step" and set(path_options) != {"fused"}:
                            continue  # the module step: the two plain paths
                        label = f"{args.backend} {dtype:8s} {layout:4s} {mode} {path:11s}"
                        try:
                            states = [_state(library, x, data_format, vectors, path_options) for library in (old, bn)]
                        except (TypeError, ValueError) as refusal:  # float64 on the fused kernel, say
                            print(f"{label} not applicable: {str(refusal).splitlines()[0]}", flush=True)
                            continue
                        calls = []
                        for library, state in zip((old, bn), states, strict=True):
                            if mode == "step":
                                calls.append(_module_step(library, state, x, data_format, path_options["fused"]))
                                continue
                            options = {"is_training": mode == "train", "data_format": data_format, **path_options}
                            calls.append(_forward(library, state, x, options, args.backend))
                        bits = "" if mode == "step" else f"  same bits: {_same_bits(*calls)}"
                        if args.rounds:
                            median, q1, q3 = _median_ratio(*calls, args.rounds, max(args.calls, 1))
                            print(f"{label} new/old {median:.2f} (quartiles {q1:.2f}-{q3:.2f}){bits}", flush=True)
                            continue
                        before, after = float("inf"), float("inf")
                        for _ in range(3):  # alternating, so that load slows both alike
                            before = min(before, _best(calls[0], per_timing=args.calls))
                            after = min(after, _best(calls[1], per_timing=args.calls))
                        print(
                            f"{label} old {before:8.3f} ms  new {after:8.3f} ms  new/old {after / before:.2f}{bits}",
                            flush=True,
                        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

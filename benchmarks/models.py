"""End-to-end timings: whole models with bn_portable's batch norm against the native one.

Usage::

    python benchmarks/models.py [--quick | --tiny] [--device cuda] [--out FILE]

What a user feels is the model, not the layer. Each case is one model in one
mode, and its variants run interleaved in the same rounds (``_timing``), so a
noisy machine slows them alike; the figure to read is the ratio to the native
variant from the same rounds, the median of three passes over every case (each
model built once).

PyTorch (``_models``): a ResNet-18 (width 32, 32×3×32×32 images, batch 32) in
NCHW and in channels-last memory, and an MLP (4 × 512, batch 256), each with
``torch.nn.BatchNorm*d`` (``native``), ``bn_portable.torch.BatchNorm`` on the
fused path (``fused``, ``from_torch``) and on the default path (``non-fused``),
and, eagerly, each path's floor (``floor fused``, ``floor non-fused``: its formula
in the fewest PyTorch operations, ``_floors``), for the maintainers' report.
Modes: ``train`` (forward, cross-entropy, backward, SGD with momentum),
``infer`` (``eval()``, no autograd) and ``train compiled`` (the same step with
the model under ``torch.compile``, compile time not counted).

JAX (``_jax_models``, when flax is installed): the layer at 32×56×56×64 NHWC
(training forward under ``jit``) and an MLP training step under ``nnx.jit``,
bn_portable against ``flax.nnx.BatchNorm`` with two-pass statistics
(``use_fast_variance=False``, the same convention) and with its default
one-pass E[x²] − E[x]².

``--tiny`` runs every case on tiny sizes in two passes of one round: that the harness works,
not how fast (the test suite runs it). The run is saved as JSON; any ratio more
than 25 % above the previous saved run's is listed under ``regressions``.
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from _models import ResNet18, mlp, with_batch_norm
from _timing import Case, load_average, machine_info, optional, save_run, time_in_passes

HERE = Path(__file__).resolve().parent
VARIANTS = ("native", "fused", "non-fused")
#: Eagerly, each path's floor too (``_models.FloorBatchNorm``); compiled, the compiler decides the operations.
FLOORS = ("floor fused", "floor non-fused")
MODES = ("train", "infer", "train compiled")

#: name → (builder, input shape, classes, channels-last memory); per size.
SIZES: dict[str, dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...], bool]]] = {
    "full": {
        "ResNet-18": (lambda: ResNet18(32), (32, 3, 32, 32), False),
        "ResNet-18 channels-last": (lambda: ResNet18(32), (32, 3, 32, 32), True),
        "MLP": (lambda: mlp(512, 4), (256, 784), False),
    },
    "tiny": {
        "ResNet-18": (lambda: ResNet18(4), (4, 3, 8, 8), False),
        "ResNet-18 channels-last": (lambda: ResNet18(4), (4, 3, 8, 8), True),
        "MLP": (lambda: mlp(16, 2), (8, 784), False),
    },
}
#: Compiling a ResNet-18 three times takes minutes on two cores; tiny runs compile the MLP only.
COMPILED_TINY = ("MLP",)


def torch_case(name: str, mode: str, size: str, device: str) -> dict[str, Callable[[], Any]]:
    """The variants of one model in one mode, as calls that block until done."""
    torch.manual_seed(0)
    build, shape, channels_last = SIZES[size][name]
    base = build()
    x = torch.randn(shape, device=device)
    labels = torch.randint(0, 10, (shape[0],), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    calls = {}
    for variant in VARIANTS + (() if mode == "train compiled" else FLOORS):
        model = with_batch_norm(base, variant).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        calls[variant] = _mode_call(model, mode, x, labels, device)
    return calls


def _mode_call(model: torch.nn.Module, mode: str, x: Any, labels: Any, device: str) -> Callable[[], Any]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if mode == "infer":
        model.eval()

        def infer() -> Any:
            with torch.no_grad():
                out = model(x)
            sync()
            return out

        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if mode == "train compiled" else model

    def step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x), labels)
        loss.backward()
        optimizer.step()
        sync()
        return loss

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "models.json")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, two passes of one round: the harness works")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--passes", type=int, default=None, help="passes over every case (default 3)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case and pass (default 7)")
    parser.add_argument("--models", nargs="+", default=None, help="only these models")
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX cases")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "full"
    passes = args.passes or (2 if args.tiny else 1 if args.quick else 3)
    rounds = args.rounds or (1 if args.tiny else 5 if args.quick else 7)
    info = machine_info(torch)
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    cases: list[Case] = []
    fields: dict[str, dict[str, Any]] = {}
    names = [n for n in SIZES[size] if not args.models or n in args.models]
    for name in names:
        for mode in MODES:
            if mode == "train compiled" and (size == "tiny" and name not in COMPILED_TINY):
                continue
            if mode == "train compiled" and "channels-last" in name:
                continue  # compiled, the layout is the compiler's choice; the NCHW model stands for both
            key = f"{name}/{mode}"
            cases.append((key, "native", functools.partial(torch_case, name, mode, size, args.device)))
            fields[key] = {"model": name, "mode": mode, "backend": "torch"}
    jax_reason = "--no-jax" if args.no_jax else None
    if jax_reason is None:
        jax_models, jax_reason = optional("_jax_models")
        if jax_models is not None:
            for key, reference, calls in jax_models.cases(size):
                cases.append((key, reference, functools.partial(dict, calls)))
                fields[key] = {"backend": "jax"}
    # Built once (compiling a model again would take minutes), timed in every pass.
    results = time_in_passes(
        cases, passes, rounds, 2, random.Random(0), keep_built=True,
        progress=lambda key: print(key, file=sys.stderr, flush=True),
    )
    payload = {
        "schema": 1,
        "size": size,
        "passes": passes,
        "rounds": rounds,
        "device": args.device,
        "machine": {**info, "load_average_end": load_average()},
        "absent": {"jax": jax_reason} if jax_reason else {},
        "cases": [
            {"key": key, "reference": reference, **fields[key], "results": results[key]}
            for key, reference, _ in cases
        ],
    }
    save_run(args.out, payload, compare=not args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

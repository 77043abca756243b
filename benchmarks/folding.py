"""Folding accuracy: this library's fold against PyTorch's ``fuse_conv_bn_eval``, per dtype.

Usage::

    PYTHONPATH=src python benchmarks/folding.py [--tiny] [--out benchmarks/results/folding.json]

Writes the JSON and a markdown table beside it (``.md``). A small conv net (four
Conv2d+BatchNorm2d+ReLU blocks, then Linear+BatchNorm1d) gets running statistics
measured on its own data in float64 (not drawn at random: each statistic then
describes what the layer really sees), with two conditions trained nets show:

- ``|mean|/σ ≈ 100``: two channels of block 1 are nearly constant after their ReLU
  (gamma = 0.05, beta = 5: a channel that learned an offset, common in trained nets),
  and two channels of block 2 draw mostly on them (their other weights are 17 times
  smaller) through an unpadded conv, so the conv output itself sits about 100 σ
  away from zero. No conv bias
  carries the offset: a bias would cancel exactly in the float64 fold;
- ``variance > 65504``: two channels of block 3 whose weights are 800 times larger,
  so their variance (≈ 1e5) does not fit float16 (apple/coreai-torch #54).

The other statistics are whatever the data give, and gamma, beta are drawn as
trained ones look (gamma ≈ N(1, 0.25), beta ≈ N(0, 0.25)). Every variant runs on
the same held-out batch; the error is against the float64 unfolded model.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from bn_portable.torch import fold_batch_norms  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CONSTANT_CHANNELS = (0, 1)  # block 1: nearly constant after the ReLU
OFFSET_CHANNELS = (3, 7)  # block 2: |mean|/σ ≈ 100
WIDE_CHANNELS = (1, 5)  # block 3: variance > 65504


def build(width: int, seed: int = 0) -> nn.Sequential:
    """The float32 model, statistics measured in float64 on its own data (eval mode)."""
    torch.manual_seed(seed)
    widths = [3, width, 2 * width, 2 * width, 4 * width]
    blocks: list[nn.Module] = []
    for index, (cin, cout) in enumerate(itertools.pairwise(widths)):
        # Block 2 without padding: zero padding would make the constant channels vary at
        # the borders, and its |mean|/σ would stay near 6.
        padding = 0 if index == 1 else 1
        blocks += [nn.Conv2d(cin, cout, 3, padding=padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 10), nn.BatchNorm1d(10)]
    model = nn.Sequential(*blocks).double()
    with torch.no_grad():
        for bn in (m for m in model if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            bn.weight.copy_(1 + 0.25 * torch.randn_like(bn.weight))
            bn.bias.copy_(0.25 * torch.randn_like(bn.bias))
        for channel in CONSTANT_CHANNELS:
            model[1].weight[channel], model[1].bias[channel] = 0.05, 5.0
        for channel in OFFSET_CHANNELS:
            model[3].weight[channel] *= 0.06
            model[3].weight[channel, CONSTANT_CHANNELS] = 0.05
        for channel in WIDE_CHANNELS:
            model[6].weight[channel] *= 800
    _measure_statistics(model, width)
    return model.float().eval()


def _measure_statistics(model: nn.Sequential, width: int) -> None:
    """Running statistics as the cumulative average over batches of the model's data (float64)."""
    for module in model:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: the statistics of all batches
    model.train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(8):
            model(_images(16, width, generator, torch.float64))
    for module in model:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    model.eval()


def _images(batch: int, width: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    size = 8 if width <= 4 else 16
    return torch.randn(batch, 3, size, size, generator=generator, dtype=dtype)


def torch_fused(model: nn.Sequential) -> nn.Sequential:
    """PyTorch's own folding of each (conv or linear, batch norm) pair, in the model's dtype."""
    fused = copy.deepcopy(model)
    for index in range(len(fused) - 1):
        layer, bn = fused[index], fused[index + 1]
        if isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            fused[index], fused[index + 1] = fuse_conv_bn_eval(layer, bn), nn.Identity()
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused[index], fused[index + 1] = fuse_linear_bn_eval(layer, bn), nn.Identity()
    return fused


def variants(model: nn.Sequential, dtype: torch.dtype) -> dict[str, nn.Module]:
    """Every way of running ``model`` in ``dtype`` that the table compares."""
    return {
        "unfolded": copy.deepcopy(model).to(dtype),
        "torch fold (float32) → cast": torch_fused(model).to(dtype),
        "torch cast → fold": torch_fused(copy.deepcopy(model).to(dtype)),
        "bn_portable, at-risk kept": fold_batch_norms(model, dtype=dtype, on_risk="keep")[0],
        "bn_portable, at-risk widened": fold_batch_norms(model, dtype=dtype, on_risk="widen")[0],
        "bn_portable, all folded": fold_batch_norms(model, dtype=dtype, on_risk="fold")[0],
    }


def errors(output: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    difference = (output.double() - reference).abs()
    finite = bool(torch.isfinite(difference).all())
    return {
        "max_abs": float(difference.max()) if finite else float("inf"),
        # The error's norm over the reference's: one number for the whole output.
        "relative": float(difference.norm() / reference.norm()) if finite else float("inf"),
        "max_relative": float(difference.max() / reference.abs().max()) if finite else float("inf"),
    }


def run(width: int, batch: int) -> dict:
    model = build(width)
    reference_model = copy.deepcopy(model).double()
    x = _images(batch, width, torch.Generator().manual_seed(2), torch.float32)
    with torch.no_grad():
        reference = reference_model(x.double())
    _, reports = fold_batch_norms(model, dtype=torch.float16, on_risk="keep")
    cases = []
    for name, dtype in DTYPES.items():
        _, risk = fold_batch_norms(model, dtype=dtype, on_risk="keep")
        results = {}
        for variant, module in variants(model, dtype).items():
            with torch.no_grad():
                results[variant] = errors(module(x.to(dtype)), reference)
        cases.append({
            "dtype": name,
            "results": results,
            "at_risk": {bn: list(report.reasons().items()) for bn, report in risk.items() if report.reasons()},
        })
    ratios = {
        f"{index}": float((bn.running_mean.abs() / (bn.running_var + bn.eps).sqrt()).max())
        for index, bn in enumerate(model) if isinstance(bn, nn.modules.batchnorm._BatchNorm)
    }
    return {
        "largest_mean_over_sigma": ratios,
        "largest_variance": {
            f"{index}": float(bn.running_var.max())
            for index, bn in enumerate(model) if isinstance(bn, nn.modules.batchnorm._BatchNorm)
        },
        "model": f"4 × (Conv2d 3x3 + BatchNorm2d + ReLU), widths {width}-{4 * width}, then Linear + BatchNorm1d",
        "input": list(x.shape),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "float16_reports": {bn: str(report) for bn, report in reports.items()},
        "cases": cases,
    }


def markdown(payload: dict) -> str:
    lines = [
        f"Model: {payload['model']}; input {'x'.join(map(str, payload['input']))}; "
        f"PyTorch {payload['torch']} on CPU ({payload['machine']}). Error of the output against "
        "the float64 unfolded model: largest absolute error, and the error's norm over the "
        "output's norm.",
        "",
        "| dtype | variant | max abs error | relative error |",
        "| --- | --- | --- | --- |",
    ]
    for case in payload["cases"]:
        for variant, result in case["results"].items():
            lines.append(
                f"| {case['dtype']} | {variant} | {result['max_abs']:.3g} | {result['relative']:.3g} |"
            )
    lines += ["", "Channels at risk (float16 fold, `on_risk=\"keep\"`):", ""]
    lines += [f"- `{bn}`: {text.replace(chr(10), '; ')}" for bn, text in payload["float16_reports"].items()
              if "0 of" not in text.split(" channels")[0]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and batch (CI)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "folding.json")
    arguments = parser.parse_args()
    payload = run(width=4, batch=2) if arguments.tiny else run(width=16, batch=32)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(payload, indent=1) + "\n")
    arguments.out.with_suffix(".md").write_text(markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    main()

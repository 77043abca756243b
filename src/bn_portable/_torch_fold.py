"""Folding a batch norm into the ``Conv1d/2d/3d`` or ``Linear`` before it, for export.

``fold_into`` (one pair) and ``fold_batch_norms`` (every pair of a model's ``nn.Sequential``
containers), re-exported by ``bn_portable.torch``. The folded weights and bias are
computed in float64 and rounded once to the target dtype; the risks are
``bn_portable.folding``'s, plus folded weights that overflow or turn subnormal.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from ._fold_kernels import fold, low_weights, risks, round_to
from ._lib._checks import check_choice, check_real
from ._lib._compat import array_namespace
from ._torch_module import BatchNorm
from ._torch_widen import wide_dtype, widened
from .folding import FoldReport, make_report, resolve_dtype

OnRisk = Literal["refuse", "keep", "widen", "fold"]
_ON_RISK = ("refuse", "keep", "widen", "fold")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class KeptBatchNorm(nn.Module):
    """A batch norm's inference on the channels a fold kept; the other channels pass through.

    ``y[c] = (x[c] - mean)·scale + beta`` for the kept channels, in the module's dtype:
    the mean is subtracted before scaling, as the unfolded batch norm does, so no large
    intermediate cancels. ``scale`` is ``gamma/sqrt(variance + epsilon)`` rounded once.
    """

    channels: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    beta: torch.Tensor

    def __init__(
        self, channels: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, beta: torch.Tensor,
        channel_axis: int = 1,
    ) -> None:
        super().__init__()
        self.channel_axis = channel_axis
        self.register_buffer("channels", channels)
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)
        self.register_buffer("beta", beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.channel_axis % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        kept = x.index_select(axis, self.channels)
        kept = (kept - self.mean.view(shape)) * self.scale.view(shape) + self.beta.view(shape)
        return x.index_copy(axis, self.channels, kept)

    def extra_repr(self) -> str:
        return f"channels={self.channels.tolist()}, channel_axis={self.channel_axis}"


def fold_into(
    layer: nn.Module,
    batch_norm: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    max_ulps: float = 8.0,
    sigmas: float = 3.0,
    on_risk: OnRisk = "refuse",
) -> tuple[nn.Module, FoldReport]:
    """``layer`` followed by ``batch_norm`` (inference) as one layer: ``(module, report)``.

    ``layer`` is a ``Conv1d/2d/3d`` (any ``groups``, with or without bias) or a ``Linear``;
    ``batch_norm`` a ``torch.nn.BatchNorm1d/2d/3d`` or a ``bn_portable.torch.BatchNorm``,
    in eval mode, normalizing ``layer``'s output channels. Neither is modified.

    The weights are scaled per output channel and the bias becomes
    ``beta + (bias - mean)·scale``, computed in float64 and rounded once to ``dtype``
    (``layer``'s by default: fold a float32 model straight into float16 with
    ``dtype=torch.float16``). Channels at risk in ``dtype`` (see
    ``bn_portable.folding.FoldReport``; also folded weights that overflow or turn
    subnormal) are handled by ``on_risk``:

    - ``"refuse"`` (default): a ``ValueError`` naming the channels and why;
    - ``"keep"``: those channels keep their batch norm: ``module`` is
      ``nn.Sequential(layer with the other channels folded, KeptBatchNorm)``;
    - ``"widen"``: those channels are computed wider (float32 for a float16 or bfloat16
      ``dtype``, float64 for float32) from the layer's weights with the batch norm folded
      in float64, and only their output is rounded to ``dtype``: ``module`` is a
      ``WidenedChannels`` holding the folded layer (a model of two dtypes: exporters
      that need one dtype throughout want ``"refuse"`` or ``"keep"``);
    - ``"fold"``: fold them anyway.

    ``module`` is a copy of ``layer``'s class when every channel folds.

    Examples
    --------
    >>> import torch
    >>> from bn_portable.torch import fold_into
    >>> conv, bn = torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4).eval()
    >>> with torch.no_grad():
    ...     _ = bn.running_mean.copy_(torch.tensor([0.1, -0.2, 80.0, 0.0]))
    >>> folded, report = fold_into(conv, bn, on_risk="keep")
    >>> report.channels(), type(folded).__name__
    ((2,), 'Sequential')
    >>> x = torch.randn(2, 3, 8, 8)
    >>> torch.allclose(folded(x), bn(conv(x)), atol=1e-4)
    True
    """
    if not isinstance(layer, _LAYERS) or isinstance(layer, nn.modules.lazy.LazyModuleMixin):
        raise TypeError(
            f"layer must be a torch.nn.Conv1d, Conv2d, Conv3d or Linear (initialized), got "
            f"{type(layer).__name__}"
        )
    action = check_choice("on_risk", on_risk, _ON_RISK)
    limit = check_real("max_ulps", max_ulps, low=0.0, allow=(float("inf"),))
    spread = check_real("sigmas", sigmas, low=0.0, low_open=True)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    weight = layer.weight.detach().to("cpu", torch.float64)
    mean, variance, gamma, beta, epsilon, axis = _statistics(batch_norm, isinstance(layer, nn.Linear))
    if mean.shape[0] != weight.shape[0]:
        raise ValueError(
            f"batch_norm has {mean.shape[0]} channels but layer has {weight.shape[0]} outputs: "
            "it must normalize the layer's output channels"
        )
    xp = array_namespace(weight)
    target, fmt = resolve_dtype(layer.weight.dtype if dtype is None else dtype, None, xp)
    bias = torch.zeros_like(mean) if layer.bias is None else layer.bias.detach().to("cpu", torch.float64)
    # With a bias b the layer's output is W·x + b, so the fold cancels W·x·scale against
    # beta - (mean - b)·scale: the folded bias, and the reach the risk estimate covers.
    scale, shift, sigma = fold(mean - bias, variance, gamma, beta, epsilon, xp=xp)
    found = risks(mean - bias, variance, sigma, gamma, beta, scale, shift, fmt, limit, spread, xp=xp)
    columns = (-1,) + (1,) * (weight.ndim - 1)
    folded_weight = weight * scale.reshape(columns)
    weight_overflow, weight_subnormal = low_weights(weight, folded_weight, fmt, xp=xp)
    usable = ~(found["nonfinite"] | found["overflow"])
    found["overflow"] = found["overflow"] | (weight_overflow & ~found["nonfinite"])
    found["subnormal"] = found["subnormal"] | (weight_subnormal & usable)
    report = make_report(found, fmt, limit, spread)
    at_risk = report.at_risk
    if action == "refuse" and bool(at_risk.any()):
        raise ValueError(
            f"folding {type(batch_norm).__name__} into {type(layer).__name__} in {fmt.name} "
            f"loses accuracy: {report.describe()}\nPass on_risk='keep' to keep those "
            "channels' batch norm unfolded, on_risk='widen' to compute them in a wider dtype, "
            "or on_risk='fold' to fold them anyway"
        )
    kept = at_risk if action == "keep" else torch.zeros_like(at_risk)
    device = layer.weight.device
    new_weight = torch.where(kept.reshape(columns), round_to(weight, fmt, xp=xp), round_to(folded_weight, fmt, xp=xp))
    new_bias = torch.where(kept, round_to(bias, fmt, xp=xp), found["shift"])
    widen = at_risk if action == "widen" else torch.zeros_like(at_risk)
    # Widened channels are overwritten in forward; zeros keep an overflowing fold's inf out.
    new_weight = torch.where(widen.reshape(columns), 0.0, new_weight)
    new_bias = torch.where(widen, 0.0, new_bias)
    folded = copy.deepcopy(layer)
    folded.weight = nn.Parameter(
        new_weight.to(device, target), requires_grad=layer.weight.requires_grad
    )
    folded.bias = nn.Parameter(new_bias.to(device, target), requires_grad=layer.weight.requires_grad)
    if bool(widen.any()):
        # The same float64 fold, rounded once to the wide dtype: on the benchmark's 200σ
        # channels fed bfloat16 inputs it errs within 20% of a float32 unfolded batch norm,
        # both 50-90 times below the final bfloat16 rounding, with one op instead of two.
        wide = resolve_dtype(wide_dtype(target), None, xp)[1]
        wide_weight, wide_bias = round_to(folded_weight, wide, xp=xp), round_to(shift, wide, xp=xp)
        groups = layer.groups if isinstance(layer, nn.modules.conv._ConvNd) else 1
        module = widened(
            folded, torch.nonzero(widen).flatten(), wide_weight, wide_bias, groups, device, target
        )
        return module, report
    if not bool(kept.any()):
        return folded, report
    index = torch.nonzero(kept).flatten()
    zero = torch.zeros_like(mean)

    def rounded(value: torch.Tensor) -> torch.Tensor:
        value_r: torch.Tensor = round_to(value[index], fmt, xp=xp)
        return value_r.to(device, target)

    keeper = KeptBatchNorm(
        index.to(device), rounded(mean), rounded(scale),
        rounded(zero if beta is None else beta), channel_axis=axis,
    )
    return nn.Sequential(folded, keeper), report


def fold_batch_norms(
    model: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    max_ulps: float = 8.0,
    sigmas: float = 3.0,
    on_risk: OnRisk = "refuse",
) -> tuple[nn.Module, dict[str, FoldReport]]:
    """A copy of ``model`` with every batch norm that follows a layer in an ``nn.Sequential``
    folded into it (``fold_into``), and ``{batch norm's name: report}``.

    Pairs are found where a ``Conv1d/2d/3d`` or ``Linear`` is directly followed by a batch
    norm inside an ``nn.Sequential`` (as torchvision's and timm's conv blocks are);
    the batch norm becomes ``nn.Identity``. With ``dtype`` the whole copy is converted
    to it, the folded layers rounded once from their float64 fold. ``model`` is not
    modified; a refusal names the batch norm.

    Examples
    --------
    >>> import torch
    >>> from bn_portable.torch import fold_batch_norms
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
    ...                             torch.nn.ReLU()).eval()
    >>> folded, reports = fold_batch_norms(model, dtype=torch.float16)
    >>> list(reports), folded[0].weight.dtype, type(folded[1]).__name__
    (['1'], torch.float16, 'Identity')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    copied = copy.deepcopy(model)
    reports: dict[str, FoldReport] = {}
    for prefix, container in list(copied.named_modules()):
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container.named_children())
        position = 0
        while position < len(children) - 1:
            (layer_name, layer), (norm_name, norm) = children[position], children[position + 1]
            if not (isinstance(layer, _LAYERS) and _is_batch_norm(norm)):
                position += 1
                continue
            name = f"{prefix}.{norm_name}" if prefix else norm_name
            try:
                folded, reports[name] = fold_into(
                    layer, norm, dtype=dtype, max_ulps=max_ulps, sigmas=sigmas, on_risk=on_risk
                )
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
            setattr(container, layer_name, folded)
            setattr(container, norm_name, nn.Identity())
            position += 2
    return (copied if dtype is None else copied.to(dtype)), reports


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, BatchNorm))


def _statistics(
    module: nn.Module, after_linear: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, float, int]:
    """``(mean, variance, gamma, beta, epsilon, channel axis)`` of an eval-mode batch norm (float64, CPU)."""
    if isinstance(module, BatchNorm):
        options = module.options
        if options["activation_fn"] is not None:
            raise ValueError("batch_norm has an activation_fn, which a linear fold cannot absorb")
        if module.data_format == "NHWC" and not after_linear:
            raise ValueError(
                "batch_norm has data_format='NHWC' (channels last) but a convolution's output "
                "is channels first: use a BatchNorm with data_format='NCHW'"
            )
        values = (module.moving_mean, module.moving_variance, module.gamma, module.beta)
        epsilon, axis = float(options["epsilon"]), (1 if module.data_format == "NCHW" else -1)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_mean is None or module.running_var is None:
            raise ValueError(
                "batch_norm has track_running_stats=False: it normalizes with each batch's "
                "statistics, which no fold can hold"
            )
        values = (module.running_mean, module.running_var, module.weight, module.bias)
        epsilon, axis = float(module.eps), 1
    else:
        raise TypeError(
            "batch_norm must be a torch.nn.BatchNorm1d/2d/3d or a bn_portable.torch.BatchNorm, "
            f"got {type(module).__name__}"
        )
    if module.training:
        raise ValueError("batch_norm is in training mode, where it uses batch statistics: call .eval()")
    mean, variance, gamma, beta = (
        None if value is None else value.detach().to("cpu", torch.float64) for value in values
    )
    assert mean is not None and variance is not None  # both are checked above
    return mean, variance, gamma, beta, epsilon, axis

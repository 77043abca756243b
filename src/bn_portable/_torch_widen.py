"""``on_risk="widen"``: a folded layer whose at-risk output channels run in a wider dtype.

In bfloat16 a channel whose conv output sits ~200σ from zero loses everything whether
it is folded or not: the layer's output (or its folded weights) keeps 8 bits, and the
batch norm subtracts almost all of them. Only a wider intermediate helps, so those few
channels are computed by a float32 copy of the layer restricted to them, and only the
result is rounded to the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def wide_dtype(target: torch.dtype) -> torch.dtype:
    """The dtype widened channels compute in: float32 below it, float64 from it on."""
    return torch.float32 if target.itemsize < 4 else torch.float64


class WidenedChannels(nn.Module):
    """``layer`` (folded, in the model's dtype) with some output channels computed wider.

    ``y = layer(x)``; then, for the channels in ``channels``, ``y[c]`` is replaced by
    ``(x·W_c + b_c)`` computed in ``weight``'s dtype (float32 for a half-precision model)
    and cast to ``y``'s dtype. ``weight`` and ``bias`` hold the layer's weights for those
    channels with the batch norm folded in float64 and rounded once to the wide dtype.
    For a grouped convolution ``inputs`` lists, channel after channel, the input channels
    of its group, and the wide part is a convolution with one group per widened channel.

    The wide buffers keep their dtype through ``.to(dtype)``, ``.half()`` and the like (a
    device move still applies): converting the model must not undo the widening.
    """

    channels: torch.Tensor
    inputs: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self, layer: nn.Module, channels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
        inputs: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Linear, *_CONVS)):
            raise TypeError(f"layer must be a Conv1d/2d/3d or Linear, got {type(layer).__name__}")
        self.layer = layer
        self.wide_dtype = weight.dtype
        self.register_buffer("channels", channels)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        # A Python flag, not a buffer test, so that forward has no data-dependent branch.
        self.gather = inputs is not None
        self.register_buffer("inputs", channels.new_empty(0) if inputs is None else inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.layer(x)
        if isinstance(self.layer, nn.Linear):
            wide = F.linear(x.to(self.weight.dtype), self.weight, self.bias)
            return y.index_copy(-1, self.channels, wide.to(y.dtype))
        return y.index_copy(1, self.channels, self._conv(x).to(y.dtype))

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.layer
        assert isinstance(conv, nn.modules.conv._ConvNd)  # Linear is handled in forward
        if self.gather:
            x = x.index_select(1, self.inputs)
        x = x.to(self.weight.dtype)
        padding: Any = conv.padding
        if conv.padding_mode != "zeros":  # as _ConvNd._conv_forward pads
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            padding = 0
        groups = self.channels.shape[0] if self.gather else 1
        function: Callable[..., torch.Tensor] = _CONVS[type(conv)]
        return function(x, self.weight, self.bias, conv.stride, padding, conv.dilation, groups)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> WidenedChannels:
        # Keep the wide values: casting back after a conversion to bfloat16 would keep its
        # rounding, so the originals are moved to wherever fn put the converted copies.
        originals = {name: getattr(self, name) for name in ("weight", "bias")}
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # torch leaves it untyped
        for name, original in originals.items():
            setattr(self, name, original.to(getattr(self, name).device))
        return self

    def extra_repr(self) -> str:
        return f"channels={self.channels.tolist()}, wide_dtype={self.wide_dtype}"


def widened(
    folded: nn.Module, index: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    groups: int, device: torch.device, target: torch.dtype,
) -> WidenedChannels:
    """``folded`` with the channels ``index`` computed from ``weight``/``bias`` (float64, folded).

    ``weight`` and ``bias`` (every output channel) already hold ``wide_dtype(target)``'s
    values; ``groups`` is the layer's; everything lands on ``device``.
    """
    wide = wide_dtype(target)
    inputs = None
    if groups > 1:
        # Output channel c of a grouped conv reads the input channels of its group only.
        per_group_in, per_group_out = weight.shape[1], weight.shape[0] // groups
        group = index // per_group_out
        inputs = (group[:, None] * per_group_in + torch.arange(per_group_in)).flatten().to(device)
    return WidenedChannels(
        folded, index.to(device), weight[index].to(device, wide), bias[index].to(device, wide), inputs
    )

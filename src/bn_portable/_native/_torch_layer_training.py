"""PyTorch's ``layer_training`` and ``fused_layer_training``: the same operations, after
one check.

At small sizes a PyTorch operation costs a microsecond or two of dispatch whatever
its arithmetic, and the generic composition added about as much again in Python
around each: every kernel's dispatch, its fast path's own checks (dtype, compiler,
functorch, autograd), the namespace's wrappers. A 64×64 float32 training call spent
16 of its 41 µs outside PyTorch's operations (2 CPU cores). Here the checks are made
once (whether the compiler traces included: the parts are told, ``eager=True``), then
the operations are the ones the generic composition runs with PyTorch's fast paths
on, in its order, so the result is the same bits: the statistics as
``local_moments`` takes them (over a channel-grouped view, in blocks) from
``SMALLEST_INPUT`` values, and below it as the generic moments kernel does
(``torch.sum`` over the same axes, divided in place by the count as a remembered 0-d operand;
the squares in place, the same values); the moving averages as ``_torch_averages``
moves them; y as ``_torch_normalize`` computes it.

Everything else returns ``NotImplemented`` to the generic composition: half input
(normalized in float32, blocked), a reducer, a weight that is an array
(half-precision variables, the compiler), autograd recording on x or the parameters,
functorch transforms, and layouts without a channel-grouped view.

``fused_layer_training`` runs the fused kernel's fast path (``_torch_fused``, which
makes its own checks and records y's gradient) and then the two averages as
``_torch_averages`` moves them, the Bessel factor a Python float as the generic kernel
gives it eagerly: the same bits. Variables other than float32, a weight that is an
array (the compiler) and whatever the fused kernel's fast path hands back go to the
generic composition.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._lib._backends import operand
from .._lib._numerics import bessel_factor
from .._lib._typing import CrossReplicaSum, Namespace
from . import _torch_moments
from ._torch_averages import lerp_toward
from ._torch_blocks import needs_autograd
from ._torch_fused import training_core
from ._torch_normalize import affine, inverse_and_shift

_DTYPES = (torch.float32, torch.float64)


def layer_training(
    x: Tensor,
    moving_mean: Tensor,
    moving_variance: Tensor,
    offset: Tensor | None,
    scale: Tensor | None,
    variance_epsilon: float,
    weight: Any,
    axes: tuple[int, ...],
    channel: int,
    *,
    xp: Namespace,
    compute: Any = None,
    reducer: CrossReplicaSum | None = None,
) -> Any:
    """The generic kernel's ``(y, mean, variance, new moving mean, new moving variance)``."""
    if (
        compute is not None
        or reducer is not None
        or type(weight) is not float
        or x.dtype not in _DTYPES
        or moving_mean.dtype != x.dtype
        or x.numel() == 0
        or torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or needs_autograd((x, offset, scale))
    ):
        return NotImplemented
    count = x.numel() // x.shape[channel]
    if x.numel() < _torch_moments.SMALLEST_INPUT:  # the generic two passes (see the module doc)
        divisor = operand(count, x, eager=True)
        mean = torch.sum(x, axes, keepdim=True).div_(divisor)  # in place: new sums
        centred = x - mean
        variance = torch.sum(centred.square_(), axes).div_(divisor)
        mean = mean.view(-1)
    else:
        view = _torch_moments.grouped(x, channel)
        if view is None:
            return NotImplemented
        mean, m2 = _torch_moments.divided_sums(view, x.dtype, count)
        variance = m2.div_(operand(count, m2, eager=True))
    inv, shift = inverse_and_shift(x, mean, variance, offset, scale, variance_epsilon, channel, xp, eager=True)
    return (
        affine(x, inv, shift),
        mean,
        variance,
        lerp_toward(moving_mean, mean, weight),
        lerp_toward(moving_variance, variance, weight),
    )


def fused_layer_training(
    x: Tensor,
    moving_mean: Tensor,
    moving_variance: Tensor,
    offset: Tensor,
    scale: Tensor,
    epsilon: float,
    weight: Any,
    channel: int,
    *,
    xp: Namespace,
) -> Any:
    """The generic kernel's ``(y, mean, biased variance, new moving mean, new moving variance)``."""
    if (
        type(weight) is not float
        or moving_mean.dtype != torch.float32
        or moving_variance.dtype != torch.float32
        or torch.compiler.is_compiling()
    ):
        return NotImplemented
    core = training_core(x, scale, offset, epsilon, channel, xp=xp, compiling=False)
    if core is NotImplemented:
        return core
    y, mean, biased, count = core
    corrected = biased * operand(bessel_factor(count), biased, eager=True)  # bessel_correction's, eagerly
    return y, mean, biased, lerp_toward(moving_mean, mean, weight), lerp_toward(moving_variance, corrected, weight)

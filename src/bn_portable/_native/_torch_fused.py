"""PyTorch's fused kernel: TensorFlow's fused batch norm in few passes, its formula kept.

``fused_training_core`` and ``fused_inference`` replace the generic
expression's half-dozen passes and temporaries with two blocked sums for the
statistics (``_torch_moments``) and one pass for y. How TensorFlow's semantics
are kept:

- **Layout.** TensorFlow's NHWC/NDHWC input is the same memory as PyTorch's
  channels-last NCHW/NCDHW: ``x.movedim(-1, 1)`` is a view, so the backward
  kernel takes it as it is and ``movedim(1, -1)`` of its result is NHWC again.
  Every rank from 2 to 5 is taken (an MLP's ``[N, C]`` input included).
- **Dtypes and ε.** scale, offset, mean and variance are float32; float16 and
  bfloat16 input stays in its dtype, all arithmetic is float32 and y is
  rounded once to x's dtype, as in TensorFlow's fused kernel. ε is passed as
  given (no floor).
- **Statistics (training).** As TensorFlow's fused kernel takes them
  (float32 sum × 1/n, then Σ(x − mean)² × 1/n), from
  ``_torch_moments.two_pass_sums`` (``torch.sum`` over a channel-grouped
  view, float64 totals of cache-sized blocks, half input widened block by
  block). Not PyTorch's statistics kernel: off by tens to hundreds of ulps
  for 10⁴–10⁵ values per channel except on contiguous float32 NCHW, and
  slower there. Under ``torch.compile`` the sums are taken in float64, which
  the compiler fuses into its own reductions. n < 2 takes the generic path
  (TensorFlow's variance is 0 there; PyTorch divides by n − 1).
- **y, half input.** On CPU, without autograd, y is computed block by block:
  each block widened, normalized in float32 and rounded into the output
  (whole-tensor float32 temporaries, fresh memory on every call, made half
  input 2–3× slower).
- **y.** TensorFlow computes ``y = (x − μ)·(rsqrt(σ² + ε)·γ) + β``, and so
  does the fast path: one subtraction into the output, then the scale and
  shift in place (``_scale_and_shift``). PyTorch's own CPU kernel folds this
  into ``x·α + (β − μ·α)``, which loses about ``|μ|/sqrt(σ² + ε)`` float32 ulps
  of ``|γ|`` (without bound when the mean is large against the spread);
  deciding per call whether the fold is safe would read the statistics on the
  host (a device-to-host synchronization on CUDA) or compute y twice. The
  scale and shift are one fused multiply-add (``torch.addcmul``, one rounding
  where TensorFlow rounds twice: never further from the exact value of the
  formula, and ``x = μ`` still gives β exactly) where the channels are x's
  innermost axis in memory (NHWC, channels-last NCHW, an MLP's ``[N, C]``);
  there it saves a pass. On contiguous NCHW, where the per-channel operands
  do not vary along the innermost axis, PyTorch's three-operand kernel does
  not vectorize and took 1.5–2.5× as long as a multiply and an add in place
  (2 cores), so those stay two operations, rounded as the generic kernel
  rounds. In training, for float32 x on CPU, the subtraction is the
  statistics' own second pass.
- **Gradients.** y is differentiable with respect to x, scale and offset
  through the full batch-norm backward: a small autograd node calls PyTorch's
  ``native_batch_norm_backward`` with the saved mean and ``1/sqrt(var + ε)``,
  which is what the training kernel's own autograd node computes (double
  backward included). The returned statistics carry no gradient (TensorFlow's
  fused op gives them none). In inference with autograd, y is the plain
  differentiable expression.
- **No host reads.** Nothing here reads array values on the host: a CUDA call
  never synchronizes, and ``torch.compile(fullgraph=True)`` traces every path
  (when compiling, y is the plain expression, which the compiler fuses).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._lib._backends import operand
from .._lib._typing import Namespace
from ._torch_blocks import blocked_on_cpu, needs_autograd, outer_blocks
from ._torch_gradients import batch_norm_backward
from ._torch_moments import grouped, two_pass_sums
from ._torch_normalize import inverse_std_of, per_channel

_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fused_training_core(
    x: Tensor, scale: Tensor, offset: Tensor, epsilon: float, channel: int, *, xp: Namespace
) -> Any:
    """Training: y, batch mean, biased variance and count, from PyTorch's kernels."""
    return training_core(x, scale, offset, epsilon, channel, xp=xp, compiling=torch.compiler.is_compiling())


def training_core(
    x: Tensor, scale: Tensor, offset: Tensor, epsilon: float, channel: int, *, xp: Namespace, compiling: bool
) -> Any:
    """``fused_training_core`` told whether PyTorch's compiler traces (``compiling``), which
    its caller asks once per call: each part asking again cost a small call two Python
    calls each time."""
    if not _eligible(x, channel, scale, offset):
        return NotImplemented
    channels = x.shape[channel]
    count = x.numel() // channels if channels else 0
    if count < 2:
        return NotImplemented
    recorded = needs_autograd([x, scale, offset])
    # The statistics carry no gradient: taken from x detached where autograd would record
    # (a detach costs a small call a quarter of what switching autograd off does).
    batch_mean, biased, centred = _summed_statistics(x.detach() if recorded else x, channel, count, compiling)
    inverse_std = inverse_std_of(biased, epsilon, xp, eager=not compiling)
    if recorded:
        # torch.autograd.Function.apply is not annotated.
        y = _NormalizeWithBatchStatistics.apply(  # type: ignore[no-untyped-call]
            x, scale, offset, batch_mean, inverse_std, channel, epsilon, compiling, centred
        )
    else:  # no graph to record: the formula itself, without the autograd node
        y = _affine(x, batch_mean, inverse_std, scale, offset, channel, compiling, centred)
    return y, batch_mean, biased, count


def _summed_statistics(x: Tensor, channel: int, count: int, compiling: bool) -> Any:
    """Mean, biased variance and (float32 x on CPU, eagerly) the centred values,
    TensorFlow's fused way (float32 sum × 1/n, then Σ(x − mean)² × 1/n), from
    ``_torch_moments.two_pass_sums``.

    Not PyTorch's statistics kernel (``torch.batch_norm_update_stats``): its
    channels-last path (NHWC, and NCHW with one pixel) and its float16/bfloat16
    path accumulate plain float32 running sums, tens of ulps off after 10⁴–10⁵
    values per channel, and where it is accurate (contiguous float32 NCHW) it
    took 2.5–3.5× as long as these sums (32×64×56×56 down to 8×32×16×16, 2 cores).
    """
    view = grouped(x, channel)
    # The centred values become y (one pass fewer) for float32 x on CPU: a GPU takes
    # every batch whole, and keeping them would add one input-sized tensor to its
    # peak memory; half input's y is a new tensor of its own dtype anyway.
    keep_centred = view is not None and x.dtype == torch.float32 and x.is_cpu and not compiling
    if view is None:  # another layout: a copy, channels last
        view = grouped(x.movedim(channel, -1).contiguous(), x.ndim - 1)
        assert view is not None
    # 1/n, a Python number applied in float32 as TF's 1/n tensor: both sums are float32,
    # so float32 x serves as operand's dtype (half x gets the number back, the same bits).
    inverse_count = operand(1.0 / count, x, eager=not compiling)
    sums = two_pass_sums(
        view, torch.float32, lambda total: total.mul_(inverse_count), compiling=compiling, keep_centred=keep_centred
    )
    return sums.mean, sums.m2.mul_(inverse_count), sums.centred


def _affine(
    x: Tensor, mean: Tensor, inverse_std: Tensor, scale: Tensor, offset: Tensor, channel: int,
    compiling: bool, centred: Tensor | None = None,
) -> Any:
    """TensorFlow's ``(x − μ)·(rsqrt(σ² + ε)·γ) + β`` in float32, rounded once to x's dtype.

    Centred first, as the generic ``fused_affine``, so accurate for every
    statistic (no folding of μ into the offset); then scaled and shifted
    (``_scale_and_shift``). ``centred``, where given, is ``x − μ`` of float32 x
    already (from the statistics' second pass; autograd records nothing here then:
    no gradient is asked for, or this is the autograd Function's forward): it is
    scaled and shifted in place and becomes y.
    """
    factor_b = per_channel(inverse_std * scale, x, channel)
    offset_b = per_channel(offset, x, channel)
    if centred is not None:
        return _scale_and_shift(centred, factor_b, offset_b, channel, compiling)
    mean_b = per_channel(mean, x, channel)
    if needs_autograd([x, mean, inverse_std, scale, offset]):
        y = (x.to(torch.float32) - mean_b) * factor_b + offset_b
        return y.to(x.dtype)
    if x.dtype != torch.float32 and blocked_on_cpu(x):
        # Half input on CPU: each block widened, normalized in float32 and rounded
        # into the output while it is in cache. Whole-tensor float32 temporaries
        # (twice the input's bytes, fresh memory every call) made this 7-10x slower.
        y = torch.empty_like(x)
        for rows in outer_blocks(x):
            widened = x[rows].to(torch.float32).sub_(mean_b)
            y[rows].copy_(_scale_and_shift(widened, factor_b, offset_b, channel, compiling))
        return y
    # Centred into a new tensor (half x is widened exactly: type promotion to the
    # mean's float32), then scaled and shifted in place (writing blocks through
    # ``out=`` slices was 20× slower on CPU) and rounded once to x's dtype.
    y = _scale_and_shift(torch.sub(x, mean_b), factor_b, offset_b, channel, compiling)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _scale_and_shift(centred: Tensor, factor_b: Tensor, offset_b: Tensor, channel: int, compiling: bool) -> Tensor:
    """``centred·factor + offset`` in place: one fused multiply-add where the channels are
    centred's innermost axis in memory, else a multiply and an add (see the module doc).
    The compiler takes no ``out=`` of another memory layout, and fuses the two anyway."""
    if centred.stride(channel) == 1 and not compiling:
        return torch.addcmul(offset_b, centred, factor_b, out=centred)
    return centred.mul_(factor_b).add_(offset_b)


class _NormalizeWithBatchStatistics(torch.autograd.Function):
    """Forward: TensorFlow's formula with given statistics; backward: as in training.

    The backward is PyTorch's own ``native_batch_norm_backward`` with the saved
    mean and ``1/sqrt(var + ε)``: what the training kernel's autograd node
    computes (double backward included).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        scale: Tensor,
        offset: Tensor,
        mean: Tensor,
        inverse_std: Tensor,
        channel: int,
        epsilon: float,
        compiling: bool,
        centred: Tensor | None,
    ) -> Any:
        ctx.save_for_backward(x, scale, mean, inverse_std)
        ctx.channel = channel
        ctx.epsilon = epsilon
        if centred is not None:
            ctx.mark_dirty(centred)  # scaled and shifted in place into y
        # Function.apply runs forward with autograd off: nothing here is recorded.
        return _affine(x, mean, inverse_std, scale, offset, channel, compiling, centred)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> Any:
        x, scale, mean, inverse_std = ctx.saved_tensors
        mask = [bool(flag) for flag in ctx.needs_input_grad[:3]]
        dx, dscale, doffset = batch_norm_backward(dy, x, scale, mean, inverse_std, ctx.channel, ctx.epsilon, mask)
        return dx, dscale, doffset, None, None, None, None, None, None


def fused_inference(
    x: Tensor, scale: Tensor, offset: Tensor, mean: Tensor, variance: Tensor, epsilon: float, channel: int, *, xp: Namespace
) -> Any:
    """TensorFlow's fused formula with the given statistics, in one pass over x."""
    if not _eligible(x, channel, scale, offset, mean, variance):
        return NotImplemented
    if x.numel() == 0:
        return NotImplemented
    compiling = torch.compiler.is_compiling()
    inverse_std = inverse_std_of(variance, epsilon, xp, eager=not compiling)
    return _affine(x, mean, inverse_std, scale, offset, channel, compiling)


def _eligible(x: Tensor, channel: int, *parameters: Any) -> bool:
    if x.dtype not in _FUSED_DTYPES or x.ndim not in (2, 3, 4, 5):
        return False
    if channel not in (1, x.ndim - 1) or not (x.is_cpu or x.is_cuda):
        return False
    if torch._C._are_functorch_transforms_active():
        return False  # in-place operations under vmap/grad transforms: stay generic
    # A loop, not all() of a generator: every small call asks, and the generator costs more.
    on_cpu = x.is_cpu  # no device object to make per parameter there
    for p in parameters:
        if p.dtype != torch.float32 or p.ndim != 1 or not (p.is_cpu if on_cpu else p.device == x.device):
            return False
    return True

"""PyTorch fast paths: batch norm in few passes, TensorFlow's formula kept.

``fused_training_core`` and ``fused_inference`` replace the generic
expression's half-dozen passes and temporaries with PyTorch's statistics
kernels and one blocked pass for y. How TensorFlow's semantics are kept:

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

``gradient_sums`` and ``gradient_input`` (the backward) work block by block
along the batch with block-sized temporaries, where the generic expressions
keep input-sized ones alive (on CPU, fresh memory for each temporary costs as
much as the arithmetic). The elementwise pass is bit-identical (same
operations, same order, written into the output); the product sum adds the
same terms in another order (float64 totals of block sums).

``local_moments`` (``_torch_moments``) sums over a channel-grouped view of the
batch, the generic kernel's two passes (``torch.var_mean`` is not faster, and many
times slower for a channels-last reduction on CPU). ``normalize``
(``_torch_normalize``) is the generic ``x·inv + shift`` with the shift added in
place; that module says why PyTorch's one-pass inference kernel, whose formula
this is, does not serve it. ``weighted_local_moments`` (``_torch_weighted``)
takes per-example weighted statistics block by block; ``move_toward``
(``_torch_averages``) moves an average in one fused multiply-add. ``_torch_blocks`` cuts a
CPU batch into the cache-sized blocks these passes share.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._lib import _layout
from .._lib._backends import operand
from .._lib._typing import Namespace
from ._registry import Kernel
from ._switch import fast_paths_enabled
from ._torch_averages import move_toward
from ._torch_blocks import blocked_on_cpu, needs_autograd, outer_blocks
from ._torch_layer_training import layer_training
from ._torch_moments import grouped, local_moments, two_pass_sums
from ._torch_normalize import normalize, per_channel, rsqrt
from ._torch_weighted import weighted_local_moments


def enabled() -> bool:
    """The fast-path switch; under ``torch.compile`` read once, at tracing, as a constant.

    A ``ContextVar`` read is a graph break for the compiler; marked constant,
    the compiler calls it once while tracing and keeps the answer in the graph.
    """
    return fast_paths_enabled()


# What torch.compiler.assume_constant_result does, without its import of the compiler: that
# import took 3 s of a 2-core machine, every eager program's first call paying for a compiler
# it never runs. tests/test_compile.py checks that the public decorator marks a function so.
enabled._dynamo_marked_constant = True  # type: ignore[attr-defined]

_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fused_training_core(
    x: Tensor, scale: Tensor, offset: Tensor, epsilon: float, channel: int, *, xp: Namespace
) -> Any:
    """Training: y, batch mean, biased variance and count, from PyTorch's kernels."""
    if not _eligible(x, channel, scale, offset):
        return NotImplemented
    channels = x.shape[channel]
    count = x.numel() // channels if channels else 0
    if count < 2:
        return NotImplemented
    recorded = needs_autograd([x, scale, offset])
    # The statistics carry no gradient: taken from x detached where autograd would record
    # (a detach costs a small call a quarter of what switching autograd off does).
    batch_mean, biased, centred = _summed_statistics(x.detach() if recorded else x, channel, count)
    # The generic kernel's rsqrt (1/sqrt in float32), so y is bit-identical to it.
    inverse_std = rsqrt(biased + operand(epsilon, biased), xp)
    if recorded:
        # torch.autograd.Function.apply is not annotated.
        y = _NormalizeWithBatchStatistics.apply(  # type: ignore[no-untyped-call]
            x, scale, offset, batch_mean, inverse_std, channel, epsilon, centred
        )
    else:  # no graph to record: the formula itself, without the autograd node
        y = _affine(x, batch_mean, inverse_std, scale, offset, channel, centred)
    return y, batch_mean, biased, count


def _summed_statistics(x: Tensor, channel: int, count: int) -> Any:
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
    keep_centred = (
        view is not None and x.dtype == torch.float32 and x.is_cpu and not torch.compiler.is_compiling()
    )
    if view is None:  # another layout: a copy, channels last
        view = grouped(x.movedim(channel, -1).contiguous(), x.ndim - 1)
        assert view is not None
    # 1/n, a Python number applied in float32 as TF's 1/n tensor: both sums are float32,
    # so float32 x serves as operand's dtype (half x gets the number back, the same bits).
    inverse_count = operand(1.0 / count, x)
    sums = two_pass_sums(view, torch.float32, lambda total: total * inverse_count, keep_centred=keep_centred)
    return sums.mean, sums.m2 * inverse_count, sums.centred


def _affine(
    x: Tensor, mean: Tensor, inverse_std: Tensor, scale: Tensor, offset: Tensor, channel: int,
    centred: Tensor | None = None,
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
        return _scale_and_shift(centred, factor_b, offset_b, channel)
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
            y[rows].copy_(_scale_and_shift(x[rows].to(torch.float32).sub_(mean_b), factor_b, offset_b, channel))
        return y
    # Centred into a new tensor (half x is widened exactly: type promotion to the
    # mean's float32), then scaled and shifted in place (writing blocks through
    # ``out=`` slices was 20× slower on CPU) and rounded once to x's dtype.
    y = _scale_and_shift(torch.sub(x, mean_b), factor_b, offset_b, channel)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _scale_and_shift(centred: Tensor, factor_b: Tensor, offset_b: Tensor, channel: int) -> Tensor:
    """``centred·factor + offset`` in place: one fused multiply-add where the channels are
    centred's innermost axis in memory, else a multiply and an add (see the module doc).
    The compiler takes no ``out=`` of another memory layout, and fuses the two anyway."""
    if centred.stride(channel) == 1 and not torch.compiler.is_compiling():
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
        centred: Tensor | None,
    ) -> Any:
        ctx.save_for_backward(x, scale, mean, inverse_std)
        ctx.channel = channel
        ctx.epsilon = epsilon
        if centred is not None:
            ctx.mark_dirty(centred)  # scaled and shifted in place into y
        # Function.apply runs forward with autograd off: nothing here is recorded.
        return _affine(x, mean, inverse_std, scale, offset, channel, centred)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> Any:
        x, scale, mean, inverse_std = ctx.saved_tensors
        mask = [bool(flag) for flag in ctx.needs_input_grad[:3]]
        dx, dscale, doffset = batch_norm_backward(dy, x, scale, mean, inverse_std, ctx.channel, ctx.epsilon, mask)
        return dx, dscale, doffset, None, None, None, None, None


def batch_norm_backward(
    dy: Tensor, x: Tensor, scale: Tensor | None, mean: Tensor, inverse_std: Tensor, channel: int,
    epsilon: float, mask: list[bool],
) -> tuple[Any, Any, Any]:
    """``(dx, dscale, doffset)`` of batch norm with batch statistics: PyTorch's own
    ``native_batch_norm_backward`` (NHWC as channels-last views), ``mask`` saying which.

    Under create_graph (grad mode on here), autograd differentiates this
    backward op by op in its inputs' dtype: half inputs would make the
    second-order gradient half-precision arithmetic. In float32 it is float32
    arithmetic, and only dx is rounded to x's dtype. First-order gradients keep
    the half kernel (float32 inside, the same result).
    """
    widen = torch.is_grad_enabled() and x.dtype not in (torch.float32, torch.float64)
    dx, dscale, doffset = torch.ops.aten.native_batch_norm_backward(
        _channels_second(dy.float() if widen else dy, channel),
        _channels_second(x.float() if widen else x, channel),
        scale, None, None, mean, inverse_std, True, epsilon, mask,
    )
    if dx is not None:
        dx = _channels_back(dx.to(x.dtype) if widen else dx, channel)
    return dx, dscale, doffset


def fused_inference(
    x: Tensor, scale: Tensor, offset: Tensor, mean: Tensor, variance: Tensor, epsilon: float, channel: int, *, xp: Namespace
) -> Any:
    """TensorFlow's fused formula with the given statistics, in one pass over x."""
    if not _eligible(x, channel, scale, offset, mean, variance):
        return NotImplemented
    if x.numel() == 0:
        return NotImplemented
    # The generic kernel's rsqrt (1/sqrt in float32), so y is bit-identical to it.
    inverse_std = rsqrt(variance + operand(epsilon, variance), xp)
    return _affine(x, mean, inverse_std, scale, offset, channel)


def gradient_sums(dy: Tensor, x: Tensor, mean: Tensor, channel: int, *, xp: Namespace) -> Any:
    """``(Σ dy, Σ dy·(x − mean))`` per channel, the product summed block by block.

    ``Σ dy`` is the generic ``torch.sum``. The products are formed and summed
    one block of the batch at a time (block-sized temporaries instead of an
    input-sized one), and the block sums added in float64 and rounded once:
    the same terms, added in another order, at least as accurately.
    """
    if torch._C._are_functorch_transforms_active() or needs_autograd([dy, x, mean]):
        return NotImplemented
    axes = _layout.reduction_axes(x.ndim, channel)
    compute = mean.dtype
    mean_b = _layout.per_channel(mean, x.ndim, channel, xp)
    partials = [
        torch.sum(torch.sub(x[rows].to(compute), mean_b).mul_(dy[rows].to(compute)), axes)
        for rows in outer_blocks(x)
    ]
    sum_dy_centred = torch.stack(partials).double().sum(0).to(compute)
    return torch.sum(dy.to(compute), axes), sum_dy_centred


def gradient_input(
    dy: Tensor, x: Tensor, mean: Tensor | None, a: Tensor, b: Tensor | None, c: Tensor | None,
    share: Tensor | None, *, xp: Namespace,
) -> Any:
    """The generic ``dy·a + ((x − mean)·b + c)``, block by block into one output (bit-identical).

    The generic expression keeps two input-sized temporaries alive at once;
    on CPU, fresh memory for each (page faults, handed back on free) costs
    more than the arithmetic. Here the output is the only large allocation:
    blocks of the batch go through the same operations in the same order,
    with block-sized scratch.
    """
    tensors = [t for t in (dy, x, mean, a, b, c, share) if t is not None]
    if torch._C._are_functorch_transforms_active() or needs_autograd(tensors):
        return NotImplemented  # out= and in-place ops: let autograd see the generic graph
    if x.ndim == 0:
        return NotImplemented
    compute = a.dtype
    dx = torch.empty_like(x)  # x's memory layout (channels-last stays channels-last)
    wide = dx.dtype == compute
    for rows in outer_blocks(x):
        out = dx[rows]
        product = torch.mul(dy[rows].to(compute), a, out=out if wide else None)
        if b is not None and c is not None and mean is not None:  # training: all three
            correction = torch.sub(x[rows].to(compute), mean).mul_(b).add_(c)
            if share is not None:
                correction.mul_(share[rows] if share.shape[0] > 1 else share)
            product.add_(correction)
        if not wide:
            out.copy_(product)  # one rounding to x's dtype
    return dx


def _eligible(x: Tensor, channel: int, *parameters: Any) -> bool:
    if x.dtype not in _FUSED_DTYPES or x.ndim not in (2, 3, 4, 5):
        return False
    if channel not in (1, x.ndim - 1) or not (x.is_cpu or x.is_cuda):
        return False
    if torch._C._are_functorch_transforms_active():
        return False  # the kernel writes its running-statistics buffers in place
    # A loop, not all() of a generator: every small call asks, and the generator costs more.
    on_cpu = x.is_cpu  # no device object to make per parameter there
    for p in parameters:
        if p.dtype != torch.float32 or p.ndim != 1 or not (p.is_cpu if on_cpu else p.device == x.device):
            return False
    return True


def _channels_second(x: Tensor, channel: int) -> Any:
    """NHWC/NDHWC as PyTorch's channels-last NCHW/NCDHW: a view, no copy."""
    return x if channel == 1 else x.movedim(channel, 1)


def _channels_back(y: Tensor, channel: int) -> Any:
    return y if channel == 1 else y.movedim(1, channel)


#: The generic kernels these replace (``_native._registry``).
KERNELS = {
    Kernel.FUSED_TRAINING: fused_training_core,
    Kernel.FUSED_INFERENCE: fused_inference,
    Kernel.LOCAL_MOMENTS: local_moments,
    Kernel.WEIGHTED_MOMENTS: weighted_local_moments,
    Kernel.NORMALIZE: normalize,
    Kernel.GRADIENT_SUMS: gradient_sums,
    Kernel.GRADIENT_INPUT: gradient_input,
    Kernel.MOVE_TOWARD: move_toward,
    Kernel.LAYER_TRAINING: layer_training,
}

"""PyTorch fast paths: the native batch-norm kernels, adapted to TensorFlow's semantics.

``fused_training_core`` and ``fused_inference`` use ``torch.native_batch_norm``
(the kernel behind ``torch.nn.functional.batch_norm`` on CPU, and PyTorch's own
CUDA kernel) instead of the generic expression's half-dozen passes and
temporaries. How TensorFlow's semantics are kept:

- **Layout.** TensorFlow's NHWC/NDHWC input is the same memory as PyTorch's
  channels-last NCHW/NCDHW: ``x.movedim(-1, 1)`` is a view, the kernel keeps
  the memory format, and ``movedim(1, -1)`` of the result is NHWC again.
- **Dtypes and ε.** scale, offset, mean and variance are float32; float16 and
  bfloat16 input stays in its dtype, all arithmetic is float32 and y is
  rounded once to x's dtype, as in TensorFlow's fused kernel. ε is passed as
  given (no floor).
- **Statistics (training).** Which kernel runs depends on whether PyTorch's
  own statistics are accurate:

  - contiguous float32 NCHW with more than one pixel: the training kernel as
    it is (two-pass statistics, a few ulps at most). It returns the mean and
    ``1/sqrt(var + ε)``; the variance comes from its running-variance buffer,
    filled with ``momentum = 1``, which holds exactly ``Σ(x − μ)²/(n − 1)``; it
    is scaled back by ``(n − 1)/n`` in float64 and rounded once to float32.
  - everything else (NHWC, float16, bfloat16, one pixel per image): PyTorch's
    kernel sums each thread's values in a plain float32 running sum, tens to
    hundreds of ulps off for 10⁴–10⁵ values per channel. The statistics are
    computed instead as TensorFlow's fused kernel does (float32 sum × 1/n,
    then Σ(x − mean)² × 1/n) with ``torch.sum`` (cascade summation, float64
    totals of cache-sized blocks), and ``y`` comes from the native kernel in
    inference mode with those statistics. A small autograd node gives the
    training gradient through PyTorch's own ``native_batch_norm_backward``
    with the same saved mean and ``1/sqrt(var + ε)``, which is what the
    training kernel's autograd node would compute (double backward included).
  - n < 2 takes the generic path (TensorFlow's variance is 0 there; PyTorch
    divides by n − 1).
- **Gradients.** Both ways are differentiable with respect to x, scale and
  offset through the full batch-norm backward: the same mathematics as
  autograd through the generic expression, in a different order. The returned
  statistics carry no gradient (TensorFlow's fused op gives them none).

Where the output differs from TensorFlow's formula, and by how much
-------------------------------------------------------------------
TensorFlow computes ``y = (x − μ)·(rsqrt(σ² + ε)·γ) + β``. PyTorch's CPU kernel
folds this into ``y = x·α + b`` with ``α = γ/sqrt(σ² + ε)`` and ``b = β − μ·α``.
The two agree up to the rounding of ``x·α`` and ``μ·α``, about
``ε_f32·|μ|·α`` absolute, that is ``|μ|/sqrt(σ² + ε)`` float32 ulps of the
output's natural scale ``|γ|``: one or two ulps for centred data, but without
bound when the mean is large against the spread. So every call checks
``max |μ|/sqrt(σ² + ε)`` (a ``C``-element reduction) and hands the call back to
the generic path above ``FOLD_LIMIT`` = 4; the fast output is then within a
few ulps of its scale of the generic one (``tests/test_fast_paths.py``). On
CUDA that check is one device-to-host read of a boolean per call.

``gradient_sums`` and ``gradient_input`` (the backward) work block by block
along the batch with block-sized temporaries, where the generic expressions
keep input-sized ones alive (on CPU, fresh memory for each temporary costs as
much as the arithmetic). The elementwise pass is bit-identical (same
operations, same order, written into the output); the product sum adds the
same terms in another order (float64 totals of block sums).

``batch_moments`` keeps the generic kernel: ``torch.var_mean`` is not faster
than the generic two-pass expression for these layouts (many times slower for
a channels-last reduction on CPU). ``normalize`` computes exactly the generic
expression but adds the shift in place into the product instead of allocating
a second full-size result: bit-identical, one allocation and one pass fewer.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch

from .. import _layout

#: Largest ``|μ|/sqrt(σ² + ε)`` for which the folded native formula is used.
FOLD_LIMIT = 4.0
#: Values per block of the variance pass of ``_training_with_summed_statistics``.
_BLOCK_ELEMENTS = 1 << 19

_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fused_training_core(x, scale, offset, epsilon, channel, xp):
    """Training: y, batch mean, biased variance and count, from PyTorch's kernels."""
    if not _eligible(x, channel, scale, offset):
        return NotImplemented
    channels = x.shape[channel]
    count = x.numel() // channels if channels else 0
    if count < 2:
        return NotImplemented
    spatial = x.numel() // (x.shape[0] * channels)
    if x.dtype == torch.float32 and channel == 1 and spatial > 1 and x.is_contiguous():
        return _native_training(x, scale, offset, epsilon, count)
    return _training_with_summed_statistics(x, scale, offset, epsilon, channel, count)


def _native_training(x, scale, offset, epsilon, count):
    """The native kernel in training mode (float32 NCHW: its statistics are accurate)."""
    channels = x.shape[1]
    stats = dict(dtype=torch.float32, device=x.device)
    running_mean = torch.zeros(channels, **stats)
    running_variance = torch.zeros(channels, **stats)
    y, batch_mean, inverse_std = torch.native_batch_norm(
        x, scale, offset, running_mean, running_variance, True, 1.0, epsilon
    )
    if _folding_error_too_large(batch_mean, inverse_std):
        return NotImplemented
    with torch.no_grad():
        biased = (running_variance.double() * ((count - 1) / count)).to(torch.float32)
    return y, batch_mean.detach(), biased, count


def _training_with_summed_statistics(x, scale, offset, epsilon, channel, count):
    """Accurate statistics, then the native kernel's normalization and backward.

    PyTorch's training kernel is accurate for contiguous float32 NCHW only: its
    channels-last path (NHWC, and NCHW with one pixel) and its float16/bfloat16
    path accumulate plain float32 running sums, tens of ulps off after 10⁴–10⁵
    values per channel. Here the statistics come from ``torch.sum`` (cascade
    summation) in two passes, TensorFlow's fused way (float32 sum × 1/n, then
    Σ(x − mean)² × 1/n), over blocks of the batch that stay in cache; ``y``
    comes from the native kernel in inference mode with those statistics, and
    the gradient from the native training backward (``native_batch_norm_backward``
    with the same saved mean and 1/sqrt(var + ε)), which is what the training
    kernel's own autograd node computes.
    """
    channels = x.shape[channel]
    # NCHW as (N, C, H·W), summed over (0, 2); NHWC as (N·H·W, C), summed over
    # rows (a two-axis reduction is quicker there). Views when contiguous.
    if channel == 1:
        grouped, dims, per_channel = x.reshape(x.shape[0], channels, -1), (0, 2), (1, channels, 1)
    else:
        grouped, dims, per_channel = x.reshape(-1, channels), (0,), (1, channels)
    block = max(1, _BLOCK_ELEMENTS // max(1, grouped[0].numel()))
    blocks = [grouped[a0 : a0 + block] for a0 in range(0, grouped.shape[0], block)]
    with torch.no_grad():
        if grouped.dtype == torch.float32:
            total = torch.sum(grouped, dims).double()
        else:  # widened block by block: quicker than torch.sum(..., dtype=float32)
            total = sum(torch.sum(b.to(torch.float32), dims).double() for b in blocks)
        inverse_count = torch.tensor(1.0 / count, dtype=torch.float32, device=x.device)
        batch_mean = total.to(torch.float32) * inverse_count
        mean_b = batch_mean.view(per_channel)
        squares = torch.zeros(channels, dtype=torch.float64, device=x.device)
        for b in blocks:
            centred = torch.sub(b, mean_b)  # float32: a half block is widened exactly
            squares += torch.sum(centred.square_(), dims).double()
        biased = squares.to(torch.float32) * inverse_count
        inverse_std = torch.rsqrt(biased.double() + epsilon).to(torch.float32)
    if _folding_error_too_large(batch_mean, inverse_std):
        return NotImplemented
    x_cl = _channels_second(x, channel)
    if _needs_autograd([x, scale, offset]):
        y = _NormalizeWithBatchStatistics.apply(
            x_cl, scale, offset, batch_mean, biased, inverse_std, epsilon
        )
    else:  # no graph to record: the kernel itself, without the autograd node
        y, _, _ = torch.native_batch_norm(
            x_cl, scale, offset, batch_mean, biased, False, 0.0, epsilon
        )
    return _channels_back(y, channel), batch_mean, biased, count


class _NormalizeWithBatchStatistics(torch.autograd.Function):
    """Forward: the native kernel with given statistics; backward: as in training."""

    @staticmethod
    def forward(ctx, x, scale, offset, mean, variance, inverse_std, epsilon):
        y, _, _ = torch.native_batch_norm(x, scale, offset, mean, variance, False, 0.0, epsilon)
        ctx.save_for_backward(x, scale, mean, inverse_std)
        ctx.epsilon = epsilon
        return y

    @staticmethod
    def backward(ctx, dy):
        x, scale, mean, inverse_std = ctx.saved_tensors
        mask = [bool(flag) for flag in ctx.needs_input_grad[:3]]
        # Under create_graph (grad mode on here), autograd differentiates this
        # backward op by op in its inputs' dtype: half inputs would make the
        # second-order gradient half-precision arithmetic. In float32 it is
        # float32 arithmetic, and only dx is rounded to x's dtype. First-order
        # gradients keep the half kernel (float32 inside, the same result).
        widen = torch.is_grad_enabled() and x.dtype != torch.float32
        dx, dscale, doffset = torch.ops.aten.native_batch_norm_backward(
            dy.float() if widen else dy,
            x.float() if widen else x,
            scale, None, None, mean, inverse_std, True, ctx.epsilon, mask,
        )
        if widen and dx is not None:
            dx = dx.to(x.dtype)
        return dx, dscale, doffset, None, None, None, None


def fused_inference(x, scale, offset, mean, variance, epsilon, channel, xp):
    """``torch.native_batch_norm`` in inference mode with the given statistics."""
    if not _eligible(x, channel, scale, offset, mean, variance):
        return NotImplemented
    if mean.requires_grad or variance.requires_grad:
        return NotImplemented  # the kernel does not differentiate its statistics
    if x.numel() == 0:
        return NotImplemented
    if _inference_folding_error_too_large(mean, variance, epsilon):
        return NotImplemented
    y, _, _ = torch.native_batch_norm(
        _channels_second(x, channel), scale, offset, mean, variance, False, 0.0, epsilon
    )
    return _channels_back(y, channel)


def normalize(x, mean, variance, offset, scale, variance_epsilon, xp):
    """The generic ``x·inv + shift``, with the shift added in place (bit-identical)."""
    if torch._C._are_functorch_transforms_active():
        return NotImplemented  # in-place ops under vmap/grad transforms: stay generic
    from .._normalize import rsqrt  # the generic kernel's own (half-aware) rsqrt

    inv = rsqrt(variance + variance_epsilon, xp)
    if scale is not None:
        inv = inv * scale
    shift = -mean * inv if offset is None else offset - mean * inv
    y = x * inv.to(x.dtype)
    shift = shift.to(x.dtype)
    if torch.broadcast_shapes(y.shape, shift.shape) != y.shape:
        return y + shift
    return y.add_(shift)


def gradient_sums(dy, x, mean, channel, xp):
    """``(Σ dy, Σ dy·(x − mean))`` per channel, the product summed block by block.

    ``Σ dy`` is the generic ``torch.sum``. The products are formed and summed
    one block of the batch at a time (block-sized temporaries instead of an
    input-sized one), and the block sums added in float64 and rounded once:
    the same terms, added in another order, at least as accurately.
    """
    if torch._C._are_functorch_transforms_active() or _needs_autograd([dy, x, mean]):
        return NotImplemented
    axes = _layout.reduction_axes(x.ndim, channel)
    compute = mean.dtype
    mean_b = _layout.per_channel(mean, x.ndim, channel, xp)
    partials = [
        torch.sum(torch.sub(x[rows].to(compute), mean_b).mul_(dy[rows].to(compute)), axes)
        for rows in _outer_blocks(x)
    ]
    sum_dy_centred = torch.stack(partials).double().sum(0).to(compute)
    return torch.sum(dy.to(compute), axes), sum_dy_centred


def gradient_input(dy, x, mean, a, b, c, share, xp):
    """The generic ``dy·a + ((x − mean)·b + c)``, block by block into one output (bit-identical).

    The generic expression keeps two input-sized temporaries alive at once;
    on CPU, fresh memory for each (page faults, handed back on free) costs
    more than the arithmetic. Here the output is the only large allocation:
    blocks of the batch go through the same operations in the same order,
    with block-sized scratch.
    """
    tensors = [t for t in (dy, x, mean, a, b, c, share) if t is not None]
    if torch._C._are_functorch_transforms_active() or _needs_autograd(tensors):
        return NotImplemented  # out= and in-place ops: let autograd see the generic graph
    if x.ndim == 0:
        return NotImplemented
    compute = a.dtype
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    wide = dx.dtype == compute
    for rows in _outer_blocks(x):
        out = dx[rows]
        product = torch.mul(dy[rows].to(compute), a, out=out if wide else None)
        if b is not None:
            correction = torch.sub(x[rows].to(compute), mean).mul_(b).add_(c)
            if share is not None:
                correction.mul_(share[rows] if share.shape[0] > 1 else share)
            product.add_(correction)
        if not wide:
            out.copy_(product)  # one rounding to x's dtype
    return dx


def _outer_blocks(x):
    """Slices of the first axis of about ``_BLOCK_ELEMENTS`` values each (at least one row).

    On a GPU the whole batch is one block: its caching allocator makes
    temporaries cheap, while every block would cost kernel launches.
    """
    if x.device.type != "cpu":
        return [slice(None)]
    step = max(1, _BLOCK_ELEMENTS // max(1, x[0].numel())) if x.shape[0] else 1
    return [slice(start, start + step) for start in range(0, max(x.shape[0], 1), step)]


def _needs_autograd(tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _eligible(x, channel, *parameters) -> bool:
    if x.dtype not in _FUSED_DTYPES or x.ndim not in (4, 5):
        return False
    if channel not in (1, x.ndim - 1) or x.device.type not in ("cpu", "cuda"):
        return False
    if torch._C._are_functorch_transforms_active():
        return False  # the kernel writes its running-statistics buffers in place
    return all(
        p.dtype == torch.float32 and p.ndim == 1 and p.device == x.device for p in parameters
    )


def _channels_second(x, channel):
    """NHWC/NDHWC as PyTorch's channels-last NCHW/NCDHW: a view, no copy."""
    return x if channel == 1 else x.movedim(channel, 1)


def _channels_back(y, channel):
    return y if channel == 1 else y.movedim(1, channel)


def _folding_error_too_large(mean, inverse_std=None, *, variance=None, epsilon=0.0) -> bool:
    """Whether ``x·α + (β − μ·α)`` may be more than a few ulps from TF's formula.

    ``|μ|·inverse_std`` per channel, or ``|μ|/sqrt(variance + ε)``. On CPU the
    ``C`` values are compared in Python: a few tiny tensor ops next to the big
    kernel measurably slow it (allocator churn), while reading ``C`` floats
    costs microseconds. NaN (a non-finite batch or variance) fails the
    comparison and so also takes the generic path.
    """
    with torch.no_grad():
        if mean.device.type == "cpu":
            means = mean.detach().tolist()
            if inverse_std is not None:
                scales = inverse_std.detach().tolist()
            else:
                scales = [_inverse_sqrt(v + epsilon) for v in variance.detach().tolist()]
            return not all(abs(m) * s <= FOLD_LIMIT for m, s in zip(means, scales))
        if inverse_std is None:
            inverse_std = torch.rsqrt(variance.detach() + epsilon)
        ratio = torch.amax(torch.abs(mean.detach()) * inverse_std.detach())
        return not bool(ratio <= FOLD_LIMIT)


#: The last few inference guards: statistics are usually the same tensors,
#: unchanged, call after call (a model's moving averages).
_INFERENCE_GUARDS: list[tuple[Any, Any, int, int, float, bool]] = []


def _inference_folding_error_too_large(mean, variance, epsilon) -> bool:
    """``_folding_error_too_large`` for given statistics, remembered per tensor version.

    The check reads the statistics on the host; remembering its answer for the
    same, unmodified tensors (``_version`` counts in-place writes) takes it off
    the path of repeated inference with a model's fixed moving averages.
    """
    try:
        versions = (mean._version, variance._version)
    except RuntimeError:  # inference-mode tensors keep no version counter
        return _folding_error_too_large(mean, variance=variance, epsilon=epsilon)
    for mean_ref, variance_ref, mean_version, variance_version, eps, answer in _INFERENCE_GUARDS:
        if (
            mean_ref() is mean
            and variance_ref() is variance
            and (mean_version, variance_version) == versions
            and eps == epsilon
        ):
            return answer
    answer = _folding_error_too_large(mean, variance=variance, epsilon=epsilon)
    try:
        entry = (weakref.ref(mean), weakref.ref(variance), *versions, epsilon, answer)
    except TypeError:  # a tensor subclass without weak references: just do not remember
        return answer
    _INFERENCE_GUARDS.insert(0, entry)
    del _INFERENCE_GUARDS[8:]
    return answer


def _inverse_sqrt(value: float) -> float:
    if value > 0:
        return value**-0.5
    return math.inf if value == 0 else math.nan

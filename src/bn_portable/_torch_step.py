"""A training step of the layer's non-fused paths as one PyTorch autograd node.

Recorded op by op, the Keras layer's and tf-slim's composite steps leave
autograd a graph of a dozen whole-tensor operations to walk back (the
statistics' two passes, the normalization, their broadcasts), each with its own
input-sized temporaries: a ResNet-18 training step with the non-fused module
cost 1.2–1.3× the native one, against 1.05× with the fused kernel, whose
backward is one node. Here the forward runs without recording and the backward
is the layer's analytic gradient: on the Keras layer's plain path (no renorm,
weights or replicas) that of batch norm with the batch's statistics, which
PyTorch's own backward kernel computes, as for the fused kernel; on the
others ``_tf._gradients.layer_backward`` (what ``batch_norm_vjp`` computes,
checked against TensorFlow's gradients by the conformance suite), in the
blocked backward kernels.

Second derivatives: when the backward itself is recorded (``create_graph=True``),
the step is recomputed with autograd recording and differentiated as before, so
a gradient penalty sees the same graph as without this node. Under
``torch.compile`` the node is not used: the compiler derives and fuses the
backward of the recorded operations itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ._lib._typing import Namespace
from ._native._torch_blocks import needs_autograd
from ._native._torch_gradients import batch_norm_backward
from ._native._torch_normalize import inverse_std_of
from ._tf._gradients import layer_backward
from ._tf._options import LayerOptions
from ._tf._plan import LayerPlan
from ._tf._state import BatchNormState
from ._tf._steps import layer_step


@dataclass
class _Step:
    """What the node needs besides the differentiable tensors; ``new_state`` comes back here."""

    state: BatchNormState
    batch_weights: Any
    options: LayerOptions
    plan: LayerPlan
    xp: Namespace
    new_state: BatchNormState | None = None


def torch_step(
    x: torch.Tensor, state: BatchNormState, batch_weights: Any, options: LayerOptions, plan: LayerPlan,
    xp: Namespace,
) -> tuple[torch.Tensor, BatchNormState]:
    """``layer_step``'s ``(y, new_state)``; a recorded non-fused training step as one node."""
    if not _wants_one_node(x, state, options, plan):
        y, new_state, _ = layer_step(x, state, batch_weights, options, plan, xp)
        return y, new_state
    step = _Step(state, batch_weights, options, plan, xp)
    # torch.autograd.Function.apply is not annotated.
    y = _LayerStep.apply(x, state.gamma, state.beta, step)  # type: ignore[no-untyped-call]
    assert step.new_state is not None
    return y, step.new_state


def _wants_one_node(x: torch.Tensor, state: BatchNormState, options: LayerOptions, plan: LayerPlan) -> bool:
    """A non-fused path in training, recorded, eagerly (the fused kernel has its own node)."""
    if not options.is_training or plan.fused_kernel or torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    return needs_autograd((x, state.gamma, state.beta))


class _LayerStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gamma: Any, beta: Any, step: _Step) -> Any:
        state = step.state._replace(gamma=gamma, beta=beta)
        y, step.new_state, used = layer_step(x, state, step.batch_weights, step.options, step.plan, step.xp)
        ctx.save_for_backward(x, gamma, beta)
        ctx.step, ctx.used = step, used
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        x, gamma, beta = ctx.saved_tensors
        step: _Step = ctx.step
        if torch.is_grad_enabled():  # create_graph: recompute, recorded, and differentiate that
            return _recorded_gradients(ctx, dy, x, gamma, beta)
        needs = ctx.needs_input_grad
        if _plain_batch_statistics(step, x):
            # The Keras layer without renorm, weights or replicas: the gradient of batch
            # norm with the batch's statistics, which PyTorch's backward kernel computes.
            used = ctx.used
            inverse_std = inverse_std_of(used.variance, step.options.epsilon, step.xp)
            mask = [bool(needs[0]), bool(needs[1]), bool(needs[2])]
            dx, dgamma, dbeta = batch_norm_backward(
                dy, x, gamma, used.mean, inverse_std, step.plan.channel, step.options.epsilon, mask
            )
            return dx, dgamma, dbeta, None
        dx, dgamma, dbeta = layer_backward(
            dy, x, step.batch_weights, ctx.used, step.options, step.plan, step.xp
        )
        return (dx if needs[0] else None, dgamma if needs[1] else None, dbeta if needs[2] else None, None)


def _plain_batch_statistics(step: _Step, x: torch.Tensor) -> bool:
    """The Keras layer's plain training step, in a layout and dtypes PyTorch's kernel takes."""
    options, plan = step.options, step.plan
    if plan.path != "keras_layer" or options.renorm or options.cross_replica_sum is not None:
        return False
    if step.batch_weights is not None or plan.channel not in (1, x.ndim - 1) or x.ndim < 2:
        return False
    state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.device.type in ("cpu", "cuda") and plan.state_dtype == state_dtype


def _recorded_gradients(ctx: Any, dy: torch.Tensor, x: Any, gamma: Any, beta: Any) -> Any:
    step: _Step = ctx.step
    state = step.state._replace(gamma=gamma, beta=beta)
    y, _, _ = layer_step(x, state, step.batch_weights, step.options, step.plan, step.xp)
    inputs = [t for t, needed in zip((x, gamma, beta), ctx.needs_input_grad[:3]) if needed]
    grads = iter(torch.autograd.grad(y, inputs, dy, create_graph=True, allow_unused=True))
    return (*(next(grads) if needed else None for needed in ctx.needs_input_grad[:3]), None)

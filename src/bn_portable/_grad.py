"""Analytic backward passes: ``fused_batch_norm_grad`` and ``batch_norm_vjp``.

The arithmetic is ``_kernels._backward``'s (its docstring has the formulas);
the layer's gradient semantics (weights, replicas, renorm) are ``_tf._gradients``'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._kernels._backward import backward
from ._lib import _checks, _layout
from ._lib._compat import array_namespace, device
from ._lib._dtypes import dtype_name
from ._lib._typing import VJP, ArrayT, CrossReplicaSum
from ._tf._gradients import layer_backward
from ._tf._plan import FUSED_INPUT_DTYPES, prepare_call
from ._tf._state import BatchNormState
from ._tf._steps import layer_step


def fused_batch_norm_grad(
    dy: ArrayT,
    x: ArrayT,
    scale: Any,
    mean: Any,
    variance: Any,
    *,
    epsilon: float = 0.001,
    data_format: str = "NHWC",
    is_training: bool = True,
) -> tuple[ArrayT, ArrayT, ArrayT]:
    """TensorFlow's ``FusedBatchNormGradV3`` CPU kernel; returns ``(dx, dscale, doffset)``.

    ``dy`` and ``x`` are float16, bfloat16 or float32 of one dtype and one shape,
    laid out per ``data_format``: NHWC or NCHW at rank 4, NDHWC or NCDHW at rank 5;
    ``scale``, ``mean`` and ``variance`` are float32 of shape ``[C]``. In
    training, ``mean`` and ``variance`` are what the forward's reserve spaces
    hold: the batch mean and the *biased* batch variance (not the
    Bessel-corrected variance ``fused_batch_norm`` returns). In inference they
    are the population statistics the forward used.

    All arithmetic is float32; ``dx`` is rounded once to x's dtype, ``dscale``
    and ``doffset`` are float32. With ``inv = rsqrt(variance + ε)`` and
    ``x̂ = (x − mean)·inv``, per channel over its n elements:

    - training: ``dx = scale·inv·[dy − mean(dy) − x̂·mean(dy·x̂)]``;
    - inference: ``dx = dy·scale·inv``;
    - both: ``dscale = Σ dy·x̂``, ``doffset = Σ dy``.

    An empty input gives an empty ``dx`` and zero ``dscale`` and ``doffset``.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([1.0, 10.0, 3.0, 30.0], dtype=np.float32).reshape(2, 1, 1, 2)  # NHWC
    >>> dy = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32).reshape(2, 1, 1, 2)
    >>> mean, biased_variance = np.array([2.0, 20.0], np.float32), np.array([1.0, 100.0], np.float32)
    >>> dx, dscale, doffset = bn.fused_batch_norm_grad(dy, x, np.ones(2, np.float32), mean, biased_variance)
    >>> print(dx.reshape(2, 2))
    [[ 0.00049925  0.        ]
     [-0.00049925  0.        ]]
    >>> print(dscale, doffset)
    [-0.9995004  0.       ] [1. 0.]
    """
    xp = _checks.namespace(x=x, dy=dy, scale=scale, mean=mean, variance=variance)
    for name, value in (("x", x), ("dy", dy), ("scale", scale), ("mean", mean), ("variance", variance)):
        _checks.check_namespace(name, value, xp)
    channel = _layout.fused_channel_axis(x, data_format)
    _checks.check_known_shape("x", x)
    _checks.check_floating("x", x, xp, FUSED_INPUT_DTYPES)
    _check_cotangent(dy, x)
    _checks.check_bool("is_training", is_training)
    epsilon = _checks.check_real("epsilon", epsilon, low=0.0)
    channels = x.shape[channel]
    for name, value in (("scale", scale), ("mean", mean), ("variance", variance)):
        _checks.check_device(name, value, device(x))
        _checks.check_floating(name, value, xp, ("float32",))
        _checks.check_shape(name, value, (channels,), f"one value per channel of x in {data_format}")
    dx, dscale, doffset = backward(
        dy, x, mean=mean, variance=variance, gamma=scale, epsilon=epsilon, channel=channel,
        training=is_training, xp=xp,
    )
    return dx, dscale, doffset


def batch_norm_vjp(
    x: ArrayT,
    state: BatchNormState | None = None,
    *,
    decay: float = 0.999,
    center: bool = True,
    scale: bool = False,
    epsilon: float = 0.001,
    activation_fn: Callable[[Any], Any] | None = None,
    param_initializers: Mapping[str, Any] | None = None,
    is_training: bool = True,
    batch_weights: Any = None,
    mask: Any = None,
    fused: bool = False,
    data_format: str = "NHWC",
    zero_debias_moving_mean: bool = False,
    renorm: bool = False,
    renorm_clipping: Mapping[str, float] | None = None,
    renorm_decay: float = 0.99,
    cross_replica_sum: CrossReplicaSum | None = None,
    skip_nonfinite: bool = False,
    execution: str = "graph",
) -> tuple[ArrayT, BatchNormState, VJP[ArrayT]]:
    """``batch_norm`` and its vector-Jacobian product; returns ``(y, new_state, vjp)``.

    ``y`` and ``new_state`` are exactly what ``batch_norm`` returns for the same
    arguments. ``vjp(dy)`` returns ``(dx, dgamma, dbeta)``, what
    ``tf.gradients(y, [x, gamma, beta], grad_ys=dy)`` gives through
    ``tf_slim.layers.batch_norm``; ``dgamma`` is ``None`` when ``scale=False``
    and ``dbeta`` is ``None`` when ``center=False``. ``dy`` has x's shape, dtype
    and library. ``dx`` has x's dtype, ``dgamma`` and ``dbeta`` the state's;
    half-precision inputs are differentiated in float32.

    Per channel, with the statistics μ, σ² the forward used, ``inv =
    rsqrt(σ² + ε)``, ``x̂ = (x − μ)·inv`` and γ the scale (1 without one):

    - training: ``dx = γ·inv·[dy − mean(dy) − x̂·mean(dy·x̂)]``;
    - with ``batch_weights`` w (the statistics are weighted means, so each
      element's share of them is ``s = w/W``, W the total weight over the
      reduced axes, and 0 where W is 0):
      ``dx = γ·inv·[dy − s·Σdy − x̂·s·Σdy·x̂]``;
    - with ``mask`` m (see ``batch_norm``), the same with ``s = m/Σm`` (0 where
      Σm is 0): a masked-out element gets ``dx = γ·inv·dy``, the statistics
      not depending on it;
    - with renorm (r and d are constants, as TensorFlow stops their gradient),
      γ becomes ``r·γ`` in dx and ``dγ = Σ dy·(x̂·r + d)``;
    - inference (moving statistics, r = 1, d = 0): ``dx = dy·γ·inv``;
    - ``dγ = Σ dy·x̂``, ``dβ = Σ dy``.

    With ``cross_replica_sum`` (synchronized batch norm, as in ``batch_norm``)
    the forward uses the global batch's statistics, and ``vjp`` sums ``Σdy``
    and ``Σdy·(x − μ)`` (and the count, total weight or ``Σm``) over the replicas, so
    ``dx`` is this shard's part of the global batch's gradient. ``dgamma`` and
    ``dbeta`` are this replica's contributions, as autograd through the
    forward gives them: their sum over the replicas (DDP's gradient
    all-reduce) is the global batch's.
    ``skip_nonfinite`` is ``batch_norm``'s: it changes only ``new_state``.

    The gradients of ``batch_weights``, ``mask`` and the state are not computed
    (TensorFlow's state updates carry none). ``activation_fn`` must be None:
    the gradient of an arbitrary callable is the caller's (apply it to ``y``
    and chain its vjp before this one). Nothing is mutated; ``vjp`` may be
    called any number of times.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]], dtype=np.float32)
    >>> y, state, vjp = bn.batch_norm_vjp(x, scale=True)
    >>> dx, dgamma, dbeta = vjp(np.ones_like(x))  # a constant dy does not change y's statistics
    >>> print(dx, dgamma, dbeta)
    [[0. 0.]
     [0. 0.]] [0. 0.] [2. 2.]
    """
    options, xp, plan, state = prepare_call(x, state, batch_weights, mask, (
        decay, center, scale, epsilon, activation_fn, param_initializers, is_training, fused,
        data_format, zero_debias_moving_mean, renorm, renorm_clipping, renorm_decay,
        cross_replica_sum, skip_nonfinite, execution,
    ))
    if options.activation_fn is not None:
        raise ValueError(
            "activation_fn must be None for batch_norm_vjp: the gradient of an arbitrary "
            "callable is the caller's; call batch_norm_vjp without it, apply the activation "
            "to y and chain its gradient before calling vjp"
        )
    y, new_state, used = layer_step(x, state, batch_weights, options, plan, xp, mask)

    def vjp(dy: ArrayT) -> tuple[ArrayT, ArrayT | None, ArrayT | None]:
        """``(dx, dgamma, dbeta)`` for the cotangent ``dy`` of ``y``."""
        _check_cotangent(dy, x)
        return layer_backward(dy, x, batch_weights, used, options, plan, xp, mask)

    return y, new_state, vjp


def _check_cotangent(dy: Any, x: Any) -> None:
    """``dy`` is the cotangent of ``y``: an array of x's library, dtype and shape."""
    xp = array_namespace(x)
    _checks.check_namespace("dy", dy, xp)
    _checks.check_device("dy", dy, device(x))
    if dy.dtype != x.dtype:
        raise TypeError(
            f"dy must have x's dtype {dtype_name(x.dtype)} (it is the gradient of y, "
            f"which has x's dtype), got {dtype_name(dy.dtype)}"
        )
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have x's shape {tuple(x.shape)}; got {tuple(dy.shape)}")


__all__ = ["batch_norm_vjp", "fused_batch_norm_grad"]

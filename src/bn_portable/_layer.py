"""``batch_norm``: the layer of ``tf.contrib.layers.batch_norm`` as a pure function.

The semantics live in ``_tf``: the options (``_tf._options``), which of
TensorFlow's implementations runs (``_tf._plan``) and one step of it
(``_tf._steps``). This module is the public signature and its docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._lib._typing import ArrayT, CrossReplicaSum
from ._tf._plan import prepare_call
from ._tf._state import BatchNormState
from ._tf._steps import layer_step


def batch_norm(
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
) -> tuple[ArrayT, BatchNormState]:
    """One call of ``tf.contrib.layers.batch_norm``; returns ``(y, new_state)``.

    ``state=None`` creates the variables from ``x`` as TensorFlow does on the
    first call (``param_initializers`` may give beta, gamma, moving_mean and
    moving_variance as arrays, numbers or callables ``(shape, dtype)``). In
    training the batch is normalized with its own mean and biased variance and
    the moving statistics move toward it; in inference the moving statistics
    are used and the state comes back unchanged. Nothing is mutated.

    ``cross_replica_sum`` synchronizes replicas that each hold one shard of a
    global batch: a callable returning the sum of one small array over every
    replica (``bn_portable.distributed`` has them for torch.distributed and
    JAX). Training statistics, batch weights included, are then the global
    batch's, and the moving statistics are identical on every replica.

    ``mask`` (Keras 3's and tf-keras's meaning; not a tf-slim argument): an
    array of x's shape without the channel axis (``x.shape[:-1]`` for NHWC),
    bool, integer or real floating. In training the batch statistics count
    only the elements where it is nonzero (``Σm·x / Σm``, other values count
    as frequency weights, as ``tf.nn.weighted_moments`` counts them), the same
    in every channel; every element is normalized with them, and the moving
    statistics move toward them (toward 0 where the mask is all zeros, as
    Keras does). In inference it is checked and unused. It runs the Keras
    layer's composite path: combined with ``batch_weights``,
    ``zero_debias_moving_mean`` or TensorFlow's fused kernel it is a
    ``ValueError``. With ``cross_replica_sum`` the masked counts and sums are
    summed over the replicas.

    ``skip_nonfinite=True`` (not in TensorFlow, which lets one bad batch turn
    the moving statistics NaN for good) keeps the state of a training step whose
    batch statistics are not finite, counting it in ``state.skipped_steps``.

    ``execution`` says how the TensorFlow program ran, which changes the last
    bits of the Keras layer's fused moving averages only: ``"graph"`` (TF1 graph
    mode, tf-slim, and these goldens) and ``"xla"`` (Keras with
    ``jit_compile=True``) move them with the weight ``1 − float32(decay)``;
    ``"eager"`` (Keras 2 in eager calls, ``tf.function`` and ``fit``) lets the
    fused kernel move them with ``float32(1 − decay)``.

    See the user guide for every argument; other names and defaults are TensorFlow's.

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]], dtype=np.float32)
    >>> y, state = bn.batch_norm(x, decay=0.9)  # creates the variables, one training step
    >>> print(y)
    [[-0.9995004 -0.999995 ]
     [ 0.9995005  0.999995 ]]
    >>> print(state.moving_mean, state.moving_variance)  # moved 10% toward [2, 20], [1, 100]
    [0.2 2. ] [ 1.       10.900001]
    >>> _, fused = bn.batch_norm(x, decay=0.9, fused=True)  # the fused kernel: Bessel-corrected
    >>> print(fused.moving_variance)
    [ 1.1 20.9]
    >>> y, _ = bn.batch_norm(x, state, decay=0.9, is_training=False)  # the moving statistics
    >>> print(y)
    [[0.7996003 2.4230187]
     [2.7986012 8.480565 ]]
    """
    options, xp, plan, state = prepare_call(x, state, batch_weights, mask, (
        decay, center, scale, epsilon, activation_fn, param_initializers, is_training, fused,
        data_format, zero_debias_moving_mean, renorm, renorm_clipping, renorm_decay,
        cross_replica_sum, skip_nonfinite, execution,
    ))
    y, new_state, _ = layer_step(x, state, batch_weights, options, plan, xp, mask)
    if options.activation_fn is not None:
        y = options.activation_fn(y)
    return y, new_state


__all__ = ["batch_norm"]

"""The TensorFlow and JAX implementations the kernel benchmark times.

TensorFlow's fused op under ``tf.function``; bn_portable and the naive
``jax.numpy`` composite, both under ``jax.jit``. Each library is passed in (it
may be absent: TensorFlow needs an environment of its own), so this module
imports neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from _kernel_cases import EPSILON, Case


def tensorflow_impls(case: Case, tf: Any) -> dict[str, Callable[[], Any] | str]:
    if case.operation == "step":
        return {}
    fmt = case.layout
    tx = tf.constant(case.x)
    tdy = tf.constant(case.dy)
    ts, to, tm, tv = (tf.constant(v) for v in (case.scale, case.offset, case.mean, case.variance))
    empty = tf.constant([], dtype=tf.float32)
    if case.operation in ("train", "infer"):
        training = case.operation == "train"
        statistics = (empty, empty) if training else (tm, tv)
        function = tf.function(
            lambda: tf.raw_ops.FusedBatchNormV3(
                x=tx,
                scale=ts,
                offset=to,
                mean=statistics[0],
                variance=statistics[1],
                epsilon=EPSILON,
                data_format=fmt,
                is_training=training,
            )[0]
        )
    else:
        function = tf.function(
            lambda: tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=tdy,
                x=tx,
                scale=ts,
                reserve_space_1=tm,
                reserve_space_2=tv,
                reserve_space_3=tv,
                epsilon=EPSILON,
                data_format=fmt,
                is_training=True,
            )[:3]
        )
    return {"tensorflow": lambda: [t.numpy() for t in tf.nest.flatten(function())]}


def jax_impls(case: Case, bn: Any, jax: Any) -> dict[str, Callable[[], Any] | str]:
    if case.operation == "step":
        return {}
    jnp = jax.numpy
    fmt, axes = case.layout, case.axes
    jx, jdy = jnp.asarray(case.x), jnp.asarray(case.dy)
    js, jo, jm, jv = (jnp.asarray(v) for v in (case.scale, case.offset, case.mean, case.variance))
    eps = np.float32(EPSILON)
    shape = [1] * len(case.shape)
    shape[case.channel] = -1
    out: dict[str, Callable[[], Any] | str] = {}
    if case.operation == "train":
        fast = jax.jit(
            lambda x, s, o: bn.fused_batch_norm(x, s, o, epsilon=EPSILON, data_format=fmt)
        )

        def naive(x, s, o):
            x32 = x.astype(jnp.float32)
            mean = jnp.mean(x32, axis=axes, keepdims=True)
            var = jnp.var(x32, axis=axes, keepdims=True)
            return (
                (x32 - mean) * (s.reshape(shape) / jnp.sqrt(var + eps)) + o.reshape(shape)
            ).astype(x.dtype)

        args = (jx, js, jo)
    elif case.operation == "infer":
        fast = jax.jit(
            lambda x, s, o, m, v: bn.fused_batch_norm(
                x, s, o, m, v, epsilon=EPSILON, data_format=fmt, is_training=False
            )
        )

        def naive(x, s, o, m, v):
            factor = s.reshape(shape) / jnp.sqrt(v.reshape(shape) + eps)
            return ((x.astype(jnp.float32) - m.reshape(shape)) * factor + o.reshape(shape)).astype(
                x.dtype
            )

        args = (jx, js, jo, jm, jv)
    else:
        grad = getattr(bn, "fused_batch_norm_grad", None)
        if grad is None:
            return {"jax fast": "bn_portable has no fused_batch_norm_grad yet"}
        fast = jax.jit(
            lambda dy, x, s, m, v: grad(dy, x, s, m, v, epsilon=EPSILON, data_format=fmt)
        )

        def naive(dy, x, s, m, v):
            x32, dy32 = x.astype(jnp.float32), dy.astype(jnp.float32)
            inv = 1 / jnp.sqrt(v.reshape(shape) + eps)
            xhat = (x32 - m.reshape(shape)) * inv
            dx = (
                s.reshape(shape)
                * inv
                * (
                    dy32
                    - jnp.mean(dy32, axis=axes, keepdims=True)
                    - xhat * jnp.mean(dy32 * xhat, axis=axes, keepdims=True)
                )
            )
            return dx.astype(x.dtype), jnp.sum(dy32 * xhat, axis=axes), jnp.sum(dy32, axis=axes)

        args = (jdy, jx, js, jm, jv)
    naive_jit = jax.jit(naive)
    out["jax fast"] = lambda: jax.block_until_ready(fast(*args))
    out["jax naive"] = lambda: jax.block_until_ready(naive_jit(*args))
    return out

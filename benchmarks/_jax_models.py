"""The JAX cases of the end-to-end benchmark: bn_portable against ``flax.nnx.BatchNorm``.

Imported only when flax is installed (``models.py`` records the reason otherwise).
Each case yields ``(key, reference, {variant: call})``; every call blocks until
its result is ready. The statistics conventions are matched: decay 0.99 is
Flax's ``momentum``, ε = 1e-5 both, and ``flax two-pass``
(``use_fast_variance=False``) computes the same two-pass variance as
bn_portable, ``flax`` (its default) the one-pass E[x²] − E[x]².
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import bn_portable as bn

jax.config.update("jax_platforms", "cpu")

OPTIONS = {"decay": 0.99, "epsilon": 1e-5, "scale": True, "data_format": "NHWC"}
#: (layer shape, MLP batch, features, layers) per size.
SIZES = {"full": ((32, 56, 56, 64), 256, 512, 4), "tiny": ((2, 4, 4, 8), 8, 16, 2)}


class PortableBatchNorm(nnx.Module):
    """``bn_portable.batch_norm`` in an nnx module: its state in nnx variables."""

    def __init__(self, features: int, *, fused: bool) -> None:
        self.fused = fused
        self.gamma = nnx.Param(jnp.ones(features))
        self.beta = nnx.Param(jnp.zeros(features))
        self.moving_mean = nnx.BatchStat(jnp.zeros(features))
        self.moving_variance = nnx.BatchStat(jnp.ones(features))

    def __call__(self, x: Any) -> Any:
        state = bn.BatchNormState(
            moving_mean=self.moving_mean.value, moving_variance=self.moving_variance.value,
            gamma=self.gamma.value, beta=self.beta.value,
        )
        y, new_state = bn.batch_norm(x, state, fused=self.fused, **OPTIONS)
        self.moving_mean.value = new_state.moving_mean
        self.moving_variance.value = new_state.moving_variance
        return y


def _flax_batch_norm(features: int, fast_variance: bool) -> nnx.Module:
    return nnx.BatchNorm(
        features, momentum=0.99, epsilon=1e-5, use_fast_variance=fast_variance, rngs=nnx.Rngs(0)
    )


LAYERS: dict[str, Callable[[int], nnx.Module]] = {
    "flax two-pass": lambda c: _flax_batch_norm(c, False),
    "flax": lambda c: _flax_batch_norm(c, True),
    "fused": lambda c: PortableBatchNorm(c, fused=True),
    "non-fused": lambda c: PortableBatchNorm(c, fused=False),
}


class MLP(nnx.Module):
    def __init__(self, norm: Callable[[int], nnx.Module], features: int, layers: int) -> None:
        rngs = nnx.Rngs(0)
        sizes = [784] + [features] * layers
        self.linears = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.norms = nnx.List([norm(features) for _ in range(layers)])
        self.head = nnx.Linear(features, 10, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        for linear, norm in zip(self.linears, self.norms):
            x = jax.nn.relu(norm(linear(x)))
        return self.head(x)


def _layer_call(layer: nnx.Module, x: Any) -> Callable[[], Any]:
    forward = nnx.jit(lambda module, batch: module(batch))
    return lambda: forward(layer, x).block_until_ready()


def _step_call(model: nnx.Module, x: Any, labels: Any) -> Callable[[], Any]:
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def step(model: nnx.Module, optimizer: nnx.Optimizer, x: Any, labels: Any) -> Any:
        def loss(model: nnx.Module) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()

        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    return lambda: step(model, optimizer, x, labels).block_until_ready()


def cases(size: str) -> Iterator[tuple[str, str, dict[str, Callable[[], Any]]]]:
    shape, batch, features, layers = SIZES[size]
    key = jax.random.key(0)
    x = jax.random.normal(key, shape) * 1.5 + 0.5
    yield (
        f"layer {'x'.join(map(str, shape))} NHWC/train (jit)", "flax two-pass",
        {name: _layer_call(build(shape[-1]), x) for name, build in LAYERS.items()},
    )
    inputs = jax.random.normal(key, (batch, 784))
    labels = jax.random.randint(key, (batch,), 0, 10)
    yield (
        "JAX MLP/train (jit)", "flax two-pass",
        {name: _step_call(MLP(build, features, layers), inputs, labels) for name, build in LAYERS.items()},
    )

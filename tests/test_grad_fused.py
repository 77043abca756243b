"""``fused_batch_norm_grad`` against the formulas of TensorFlow's kernel and autodiff through ``fused_batch_norm``."""

from __future__ import annotations

import numpy as np
import pytest
from conformance.backends import Backend

import bn_portable as bn
from grad_cases import TOLERANCE, assert_close

RNG = np.random.default_rng(20261128)

FUSED_SHAPES = {"NHWC": (2, 3, 4, 5), "NCHW": (2, 5, 3, 4), "NDHWC": (2, 2, 3, 2, 5), "NCDHW": (2, 5, 2, 3, 2)}


def _fused_inputs(data_format, is_training):
    shape = FUSED_SHAPES[data_format]
    channel = 1 if data_format in ("NCHW", "NCDHW") else len(shape) - 1
    axes = tuple(a for a in range(len(shape)) if a != channel)
    x = RNG.normal(3.0, 2.0, size=shape).astype(np.float32)
    dy = RNG.normal(0.1, 1.0, size=shape).astype(np.float32)
    scale = RNG.normal(1.0, 0.5, size=shape[channel]).astype(np.float32)
    if is_training:
        # What the forward's reserve spaces hold: batch mean and biased variance.
        mean, variance = x.mean(axis=axes, dtype=np.float64), x.astype(np.float64).var(axis=axes)
    else:
        mean = RNG.normal(3.0, 1.0, size=shape[channel])
        variance = RNG.uniform(0.5, 4.0, size=shape[channel])
    return x, dy, scale, mean.astype(np.float32), variance.astype(np.float32), channel, axes


def _textbook_fused_grad(x, dy, scale, mean, variance, epsilon, channel, axes, is_training):
    """The formulas of TF's kernel comment, in float64."""
    shape = [1] * x.ndim
    shape[channel] = -1
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean, variance, scale = (np.asarray(a, np.float64).reshape(shape) for a in (mean, variance, scale))
    inv = 1 / np.sqrt(variance + np.float64(np.float32(epsilon)))
    normalized = (x - mean) * inv
    dscale = (dy * normalized).sum(axis=axes)
    doffset = dy.sum(axis=axes)
    if is_training:
        dx = scale * inv * (
            dy - dy.mean(axis=axes, keepdims=True)
            - normalized * (dy * normalized).mean(axis=axes, keepdims=True)
        )
    else:
        dx = dy * scale * inv
    return dx, dscale, doffset


@pytest.mark.parametrize("is_training", [True, False], ids=["train", "inference"])
@pytest.mark.parametrize("data_format", list(FUSED_SHAPES))
def test_fused_batch_norm_grad_matches_the_formulas(backend: Backend, data_format, is_training):
    x, dy, scale, mean, variance, channel, axes = _fused_inputs(data_format, is_training)
    args = [backend.asarray(a, "float32") for a in (dy, x, scale, mean, variance)]
    dx, dscale, doffset = backend.call(
        lambda *a: bn.fused_batch_norm_grad(*a, epsilon=1e-3, data_format=data_format, is_training=is_training),
        *args,
    )
    expected = _textbook_fused_grad(x, dy, scale, mean, variance, 1e-3, channel, axes, is_training)
    for name, ours, theirs in zip(("dx", "dscale", "doffset"), (dx, dscale, doffset), expected):
        assert_close(backend.to_numpy(ours), theirs, 2e-6, name)
        assert "float32" in str(ours.dtype)


@pytest.mark.parametrize("is_training", [True, False], ids=["train", "inference"])
@pytest.mark.parametrize("data_format", list(FUSED_SHAPES))
def test_fused_batch_norm_grad_matches_autodiff(data_format, is_training):
    """Against torch.autograd and jax.grad through ``fused_batch_norm`` itself."""
    x, dy, scale, mean, variance, *_ = _fused_inputs(data_format, is_training)
    kwargs = {"epsilon": 1e-3, "data_format": data_format, "is_training": is_training}
    ours = bn.fused_batch_norm_grad(dy, x, scale, mean, variance, **kwargs)
    stats = (None, None) if is_training else (mean, variance)

    torch = pytest.importorskip("torch")
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, scale, np.zeros_like(scale))]
    stats_t = [None if s is None else torch.tensor(s) for s in stats]
    y = bn.fused_batch_norm(*leaves, *stats_t, **kwargs)[0]
    for name, mine, theirs in zip(("dx", "dscale", "doffset"), ours, torch.autograd.grad(y, leaves, torch.tensor(dy))):
        assert_close(mine, theirs.numpy(), 2e-5, f"torch {name}")

    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    stats_j = [None if s is None else jnp.asarray(s) for s in stats]

    def loss(x_, scale_, offset_):
        return jnp.sum(bn.fused_batch_norm(x_, scale_, offset_, *stats_j, **kwargs)[0] * jnp.asarray(dy))

    grads = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(scale), jnp.zeros_like(jnp.asarray(scale)))
    for name, mine, theirs in zip(("dx", "dscale", "doffset"), ours, grads):
        assert_close(mine, np.asarray(theirs), 2e-5, f"jax {name}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_batch_norm_grad_half_inputs_compute_in_float32(backend: Backend, dtype):
    if dtype not in backend.dtypes:
        pytest.skip(f"{backend.name} has no {dtype}")
    x, dy, scale, mean, variance, channel, axes = _fused_inputs("NHWC", True)
    x_b, dy_b = backend.asarray(x, dtype), backend.asarray(dy, dtype)
    # Statistics of the rounded input, as the forward would have computed them.
    x_rounded = backend.to_numpy(x_b).astype(np.float64)
    mean, variance = x_rounded.mean(axis=axes).astype(np.float32), x_rounded.var(axis=axes).astype(np.float32)
    args = [x_b, dy_b] + [backend.asarray(a, "float32") for a in (scale, mean, variance)]
    dx, dscale, doffset = backend.call(lambda x_, dy_, s, m, v: bn.fused_batch_norm_grad(dy_, x_, s, m, v), *args)
    assert dtype in str(dx.dtype)
    assert "float32" in str(dscale.dtype) and "float32" in str(doffset.dtype)
    expected = _textbook_fused_grad(
        x_rounded, backend.to_numpy(dy_b), scale, mean, variance, 1e-3, channel, axes, True
    )
    assert_close(backend.to_numpy(dx), expected[0], TOLERANCE[dtype], "dx")
    assert_close(backend.to_numpy(dscale), expected[1], 1e-5, "dscale")
    assert_close(backend.to_numpy(doffset), expected[2], 1e-5, "doffset")


def test_fused_batch_norm_grad_of_an_empty_batch_is_zero():
    x = np.zeros((0, 2, 2, 3), np.float32)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    for is_training in (True, False):
        dx, dscale, doffset = bn.fused_batch_norm_grad(x, x, ones, zeros, ones, is_training=is_training)
        assert dx.shape == x.shape and dx.dtype == np.float32
        np.testing.assert_array_equal(dscale, zeros)
        np.testing.assert_array_equal(doffset, zeros)

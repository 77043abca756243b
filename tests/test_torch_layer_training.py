"""PyTorch's ``layer_training`` and ``fused_layer_training`` (a layer's plain training step
as one kernel, without and with the fused kernel): the same bits as the generic
composition with PyTorch's other fast paths, and the inputs each hands back to it."""

from __future__ import annotations

import numpy as np
import pytest

import fast_paths_cases
from fast_paths_cases import _small_torch_blocks, _to_torch, _torch_xp

_seed_per_test = fast_paths_cases._seed_per_test
torch_fast = fast_paths_cases.torch_fast

# Below and above _torch_moments.SMALLEST_INPUT (2^16 values): the generic two passes
# there, the grouped sums of local_moments here; NCHW, NHWC and [N, C].
SHAPES = [
    pytest.param((64, 64), 1, id="MLP-64x64"),
    pytest.param((4, 8, 6, 6), 1, id="NCHW-small"),
    pytest.param((4, 6, 6, 8), 3, id="NHWC-small"),
    pytest.param((16, 32, 12, 12), 1, id="NCHW-large"),
    pytest.param((16, 12, 12, 32), 3, id="NHWC-large"),
    pytest.param((4096, 24), 1, id="MLP-large"),
]


def _arguments(shape, channel, dtype, *, parameters=True, loc=0.5):
    torch = pytest.importorskip("torch")
    rng = fast_paths_cases.RNG
    x = _to_torch(rng.normal(loc, 1.5, shape), "float32").to(getattr(torch, dtype))
    channels = shape[channel]

    def vector(low, high):
        return _to_torch(rng.uniform(low, high, channels), "float32").to(x.dtype)

    offset, scale = (vector(-1.0, 1.0), vector(0.5, 1.5)) if parameters else (None, None)
    axes = tuple(axis for axis in range(len(shape)) if axis != channel)
    return x, vector(-0.5, 0.5), vector(0.5, 2.0), offset, scale, 1e-3, axes, channel


@pytest.mark.parametrize("block_elements", [None, 64])
@pytest.mark.parametrize("weight", [0.001, 0.75])
@pytest.mark.parametrize("parameters", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("shape", "channel"), SHAPES)
def test_the_same_bits_as_the_generic_composition(
    torch_fast, monkeypatch, shape, channel, dtype, parameters, weight, block_elements
):
    """y, the statistics and both moved averages, every one bit for bit (a weight of one half
    or more moves them by a subtraction, not lerp; tiny blocks run the blocked sums)."""
    import torch

    from bn_portable._kernels._layer_training import layer_training

    _small_torch_blocks(monkeypatch, torch_fast, block_elements)
    x, mean, variance, offset, scale, epsilon, axes, channel = _arguments(
        shape, channel, dtype, parameters=parameters, loc=1e3
    )
    given = [t.clone() for t in (x, mean, variance)]
    fast = torch_fast.layer_training(
        x, mean, variance, offset, scale, epsilon, weight, axes, channel, xp=_torch_xp()
    )
    generic = layer_training.generic(
        x, mean, variance, offset, scale, epsilon, weight, axes, channel, xp=_torch_xp()
    )
    assert fast is not NotImplemented
    for name, a, b in zip(("y", "mean", "variance", "moving mean", "moving variance"), fast, generic):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.equal(a, b), name
    # Nothing it was given changed (the squares are taken in place in a temporary).
    assert all(torch.equal(a, b) for a, b in zip(given, (x, mean, variance)))


def test_statistics_are_accurate_for_an_ill_conditioned_batch(torch_fast):
    """|mean|/σ = 10⁴ in float32: the two passes keep the variance (float64 reference)."""
    x, mean, variance, offset, scale, epsilon, axes, channel = _arguments((64, 64), 1, "float32", loc=1.5e4)
    _, batch_mean, batch_variance, _, _ = torch_fast.layer_training(
        x, mean, variance, offset, scale, epsilon, 0.001, axes, channel, xp=_torch_xp()
    )
    x64 = x.double().numpy()
    eps = float(np.finfo(np.float32).eps)
    assert np.allclose(batch_mean.double().numpy(), x64.mean(axis=0), rtol=2 * eps, atol=0)
    # The variance inherits the mean's rounding: about eps·|mean|/σ relative.
    assert np.allclose(batch_variance.double().numpy(), x64.var(axis=0), rtol=4 * eps * 1e4, atol=0)


def test_hands_back_what_the_generic_composition_serves(torch_fast):
    """Half input, a reducer, a weight that is an array, autograd recording, an empty batch."""
    import torch

    xp = _torch_xp()
    x, mean, variance, offset, scale, epsilon, axes, channel = _arguments((8, 16), 1, "float32")

    def call(**changes):
        arguments = {"x": x, "moving_mean": mean, "moving_variance": variance, "offset": offset,
                     "scale": scale, "variance_epsilon": epsilon, "weight": 0.001, "axes": axes,
                     "channel": channel, **changes}
        return torch_fast.layer_training(**arguments, xp=xp)

    assert call() is not NotImplemented
    assert call(x=x.to(torch.float16), compute=torch.float32) is NotImplemented
    assert call(x=x.to(torch.bfloat16)) is NotImplemented
    assert call(reducer=lambda t: t) is NotImplemented
    assert call(weight=torch.tensor(0.001)) is NotImplemented
    assert call(x=x.detach().requires_grad_()) is NotImplemented
    assert call(scale=scale.detach().requires_grad_()) is NotImplemented
    with torch.no_grad():
        assert call(x=x.detach().requires_grad_()) is not NotImplemented
    assert call(x=x[:0]) is NotImplemented


def _fused_arguments(shape, channel, dtype, requires_grad=False):
    """The fused kernel's arguments: float32 statistics and parameters, x of ``dtype``."""
    x, mean, variance, offset, scale, epsilon, _, channel = _arguments(shape, channel, "float32", loc=1e3)
    x = x.to(getattr(pytest.importorskip("torch"), dtype)).requires_grad_(requires_grad)
    return x, mean, variance, offset, scale, epsilon, channel


@pytest.mark.parametrize("block_elements", [None, 64])
@pytest.mark.parametrize("weight", [0.001, 0.75])
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("shape", "channel"), SHAPES)
def test_fused_step_the_same_bits_as_the_generic_composition(
    torch_fast, monkeypatch, shape, channel, dtype, requires_grad, weight, block_elements
):
    """y, the statistics and both moved averages bit for bit, the moving variance toward the
    Bessel-corrected variance; with autograd recording, y's gradient bit for bit too."""
    import torch

    from bn_portable._kernels._layer_training import fused_layer_training

    _small_torch_blocks(monkeypatch, torch_fast, block_elements)
    x, mean, variance, offset, scale, epsilon, channel = _fused_arguments(shape, channel, dtype, requires_grad)
    given = [t.detach().clone() for t in (x, mean, variance, offset, scale)]
    outputs = []
    for kernel in (torch_fast.fused_layer_training, fused_layer_training.generic):
        result = kernel(x, mean, variance, offset, scale, epsilon, weight, channel, xp=_torch_xp())
        assert result is not NotImplemented
        gradient = torch.autograd.grad(result[0].float().square().sum(), x)[0] if requires_grad else None
        outputs.append((*result, gradient))
    names = ("y", "mean", "variance", "moving mean", "moving variance", "dx")
    for name, a, b in zip(names, *outputs):
        if name == "dx" and not requires_grad:
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(given, (x, mean, variance, offset, scale)))


def test_fused_step_moves_the_variance_toward_the_bessel_corrected_variance(torch_fast):
    """The moved variance against float64 arithmetic on the returned statistics: the
    Bessel factor n/(n − 1) is there (without it the move would be 1/64 smaller)."""
    x, mean, variance, offset, scale, epsilon, channel = _fused_arguments((65, 8), 1, "float32")
    _, _, batch_variance, _, moved = torch_fast.fused_layer_training(
        x, mean, variance, offset, scale, epsilon, 0.5, channel, xp=_torch_xp()
    )
    expected = 0.5 * variance.double() + 0.5 * batch_variance.double() * 65 / 64
    assert np.allclose(moved.double().numpy(), expected.numpy(), rtol=4e-7, atol=0)


def test_fused_step_hands_back_what_the_generic_composition_serves(torch_fast):
    """Other variables than float32, a weight that is an array, whatever the fused kernel's
    fast path hands back (float64 x, a single value per channel)."""
    import torch

    xp = _torch_xp()
    x, mean, variance, offset, scale, epsilon, channel = _fused_arguments((8, 16), 1, "float32")

    def call(**changes):
        arguments = {"x": x, "moving_mean": mean, "moving_variance": variance, "offset": offset,
                     "scale": scale, "epsilon": epsilon, "weight": 0.001, "channel": channel, **changes}
        return torch_fast.fused_layer_training(**arguments, xp=xp)

    assert call() is not NotImplemented
    assert call(moving_mean=mean.double()) is NotImplemented
    assert call(moving_variance=variance.double()) is NotImplemented
    assert call(weight=torch.tensor(0.001)) is NotImplemented
    assert call(x=x.double()) is NotImplemented
    assert call(x=x[:1]) is NotImplemented

"""``bn_portable.torch``: from_torch and to_torch, to and from PyTorch's batch norms."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="bn_portable.torch needs PyTorch, which is not installed")

from bn_portable.torch import BatchNorm, from_torch, to_torch  # noqa: E402
from torch_module_cases import _input, _perturb  # noqa: E402

pytestmark = pytest.mark.home_backend("torch")

nn = torch.nn


@pytest.mark.parametrize(
    ("kind", "shape"),
    [(nn.BatchNorm1d, (24, 3)), (nn.BatchNorm2d, (3, 3, 2, 2)), (nn.BatchNorm3d, (2, 3, 2, 2, 3))],
)
def test_from_torch_follows_pytorch_statistics(kind, shape):
    """The fused kernel's moving variance is Bessel-corrected like PyTorch's.

    With 12 or 24 values per channel a biased update would be off by 1/11 or
    1/23 of the batch variance's share, far above the tolerance.
    """
    source = kind(3, momentum=0.3, eps=1e-3)
    _perturb(source)
    converted = from_torch(source)
    assert converted.options["decay"] == pytest.approx(0.7)
    assert converted.options["epsilon"] == 1e-3 and converted.options["fused"]
    for seed in range(3):
        x = _input(shape, seed=seed)
        with torch.no_grad():
            torch.testing.assert_close(converted(x), source(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(converted.moving_mean, source.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(converted.moving_variance, source.running_var, rtol=1e-6, atol=1e-6)
    source.eval(), converted.eval()
    x = _input(shape, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), source(x), rtol=1e-5, atol=1e-5)
    back = to_torch(converted, kind)
    assert back.momentum == pytest.approx(0.3) and back.eps == 1e-3 and not back.training
    for name, field in [("running_mean", "moving_mean"), ("running_var", "moving_variance"),
                        ("weight", "gamma"), ("bias", "beta")]:
        assert torch.equal(getattr(back, name), getattr(converted, field))


def test_from_torch_rank_3_input_takes_the_biased_variance():
    """The documented residual difference: no fused kernel for (N, C, L) input.

    TensorFlow's layer runs its composite there, whose moving variance moves
    toward the biased batch variance; PyTorch's toward the unbiased one.
    """
    source = nn.BatchNorm1d(3, momentum=0.5)
    converted = from_torch(source)
    x = _input((2, 3, 3))
    n = 6
    source(x), converted(x)
    biased = x.var(dim=(0, 2), unbiased=False)
    torch.testing.assert_close(converted.moving_variance, 0.5 + 0.5 * biased)
    torch.testing.assert_close(source.running_var, 0.5 + 0.5 * biased * n / (n - 1))


def test_from_torch_keeps_affine_off_and_requires_grad():
    source = nn.BatchNorm2d(3, affine=False)
    converted = from_torch(source)
    assert converted.fields == ("moving_mean", "moving_variance")
    assert converted.gamma is None and converted.beta is None
    frozen = nn.BatchNorm2d(3)
    frozen.weight.requires_grad_(False)
    assert not from_torch(frozen).gamma.requires_grad


def test_conversions_are_classmethods_and_a_method():
    """from_torch / to_torch call BatchNorm.from_torch / .to_torch; subclasses get themselves."""

    class Tagged(BatchNorm):
        pass

    source = _perturb(nn.BatchNorm2d(3, momentum=0.2))
    converted = Tagged.from_torch(source)
    assert type(converted) is Tagged and type(from_torch(source)) is BatchNorm
    assert type(Tagged.from_state(converted.state, **converted.options)) is Tagged
    back, function_back = converted.to_torch(nn.BatchNorm3d), to_torch(converted, nn.BatchNorm3d)
    assert type(back) is type(function_back) is nn.BatchNorm3d
    for name, value in back.state_dict().items():
        assert torch.equal(function_back.state_dict()[name], value)
    with pytest.raises(TypeError, match=r"module must be a bn_portable\.torch\.BatchNorm"):
        to_torch(source)
    with pytest.raises(TypeError, match="kind must be"):
        converted.to_torch(nn.InstanceNorm2d)


@pytest.mark.parametrize(
    ("module", "error", "match"),
    [
        (nn.BatchNorm2d(3, momentum=None), ValueError, "momentum=None"),
        (nn.BatchNorm2d(3, track_running_stats=False), ValueError, "track_running_stats=False"),
        (nn.BatchNorm2d(3).double(), ValueError, "float32"),
        (nn.BatchNorm2d(3).half(), ValueError, "float32"),
        (nn.LazyBatchNorm2d(), ValueError, "lazy"),
        (nn.SyncBatchNorm(3), TypeError, "SyncBatchNorm"),
        (nn.InstanceNorm2d(3), TypeError, "InstanceNorm2d"),
    ],
)
def test_from_torch_refuses_with_a_reason(module, error, match):
    with pytest.raises(error, match=match):
        from_torch(module)


def test_to_torch_refuses_with_a_reason():
    with pytest.raises(ValueError, match="fused=False"):
        to_torch(BatchNorm(3, scale=True))
    with pytest.raises(ValueError, match=r"NHWC.*center and scale differ"):
        to_torch(BatchNorm(3, data_format="NHWC", fused=True))

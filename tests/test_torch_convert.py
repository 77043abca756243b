"""``bn_portable.torch.convert_batch_norms`` without TensorFlow's variables: from_torch's contract.

Every batch norm of a PyTorch model converted at once must compute what
PyTorch computes; the report, and the refusals, name each module. With the
Keras layers of tests/data/porting: ``test_torch_convert_keras.py``.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest

torch = pytest.importorskip("torch", reason="bn_portable.torch needs PyTorch, which is not installed")

from bn_portable.torch import (  # noqa: E402
    BatchNorm,
    ConversionReport,
    ConvertedBatchNorm,
    convert_batch_norms,
)
from torch_convert_cases import (  # noqa: E402
    KERAS_PORT_NAMES,
    KerasPort,
    _keras_batch_norms,
    _problem,
    _torch_batch_norms,
)

pytestmark = pytest.mark.home_backend("torch")

nn = torch.nn


class Block(nn.Module):
    """A residual block: conv, BN, ReLU, conv, BN, plus the input."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, momentum=0.2)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-3)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def _resnet_like(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(Block(4), Block(4)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6, momentum=0.3),
    )
    # Non-default statistics and affine parameters, so that copying them is observable.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model


RESNET_NAMES = ["1", "3.0.bn1", "3.0.bn2", "3.1.bn1", "3.1.bn2", "7"]


def _input(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((8, 3, 6, 6), generator=generator) * 2 + 0.5


def test_without_batch_norms_the_model_computes_what_pytorch_computes():
    source = _resnet_like()
    model = copy.deepcopy(source)
    returned, _ = convert_batch_norms(model)
    assert returned is model
    assert not _torch_batch_norms(model)
    converted = {n: m for n, m in model.named_modules() if isinstance(m, BatchNorm)}
    assert list(converted) == RESNET_NAMES
    for name, original in _torch_batch_norms(source).items():
        assert converted[name].options["decay"] == pytest.approx(1 - original.momentum)
        assert converted[name].options["epsilon"] == original.eps
        assert torch.equal(converted[name].moving_variance, original.running_var)
    x = _input()
    # Training: one step, outputs, gradients and the statistics after it.
    y_source, y_model = source(x), model(x)
    torch.testing.assert_close(y_model, y_source, rtol=1e-5, atol=1e-5)
    y_source.square().mean().backward()
    y_model.square().mean().backward()
    torch.testing.assert_close(model[0].weight.grad, source[0].weight.grad, rtol=1e-4, atol=1e-5)
    for name, original in _torch_batch_norms(source).items():
        torch.testing.assert_close(converted[name].moving_mean, original.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(converted[name].moving_variance, original.running_var, rtol=1e-6, atol=1e-6)
    # Inference with the updated statistics.
    source.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_input(seed=2)), source(_input(seed=2)), rtol=1e-5, atol=1e-5)


def test_report_without_batch_norms():
    _, report = convert_batch_norms(_resnet_like())
    assert isinstance(report, ConversionReport) and len(report) == 6
    assert [entry.name for entry in report] == RESNET_NAMES
    entry = report["7"]
    assert entry == ConvertedBatchNorm("7", None, nn.BatchNorm1d, 6, {})
    assert all(e.tf_name is None and not e.changes for e in report)  # from_torch is faithful
    assert [e.torch_type for e in report] == [nn.BatchNorm2d] * 5 + [nn.BatchNorm1d]
    lines = str(report).splitlines()
    assert lines[0].split() == ["torch", "module", "class", "channels", "TensorFlow", "layer", "changes"]
    assert lines[2].split() == ["3.0.bn1", "BatchNorm2d", "4", "-", "-"]
    with pytest.raises(KeyError, match="no batch norm named '3'"):
        report["3"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.modules = ()
    with pytest.raises(TypeError):
        entry.changes["decay"] = (0.9, 0.99)  # read-only
    assert str(convert_batch_norms(nn.Linear(2, 2))[1]) == "no batch norms converted"


def test_modes_frozen_parameters_and_shared_modules_carry_over():
    shared = nn.BatchNorm2d(3)
    frozen = nn.BatchNorm2d(3).eval()
    frozen.weight.requires_grad_(False)
    inner = nn.Sequential(shared, nn.ReLU(), shared)  # one module held twice by one parent
    model = nn.Sequential(inner, frozen, shared)
    _, report = convert_batch_norms(model)
    assert [e.name for e in report] == ["0.0", "1"]  # named_modules gives a shared module once
    assert isinstance(model[2], BatchNorm) and model[2] is model[0][0] is model[0][2]
    assert model[2].training and not model[1].training
    assert not model[1].gamma.requires_grad and model[1].beta.requires_grad


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (nn.BatchNorm2d(3, momentum=None), "momentum=None"),
        (nn.BatchNorm2d(3, track_running_stats=False), "track_running_stats=False"),
        (nn.BatchNorm1d(3).double(), "float32"),
        (nn.LazyBatchNorm2d(), "lazy"),
        (nn.SyncBatchNorm(3), "SyncBatchNorm"),
    ],
)
def test_without_batch_norms_the_refusals_are_from_torchs(module, match):
    _problem(nn.Sequential(nn.ReLU(), nn.Sequential(module)), match=rf"'1\.0' \({type(module).__name__}\): .*{match}")


def test_every_problem_is_listed_and_a_failed_call_changes_nothing():
    model = _resnet_like()
    model[3][1].bn2 = nn.BatchNorm2d(4, momentum=None)  # the fifth of six: four convert before it
    model[7] = nn.BatchNorm1d(6, track_running_stats=False)
    before = [(name, module) for name, module in model.named_modules()]
    values = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"changed nothing: 2 problem\(s\):\n- '3\.1\.bn2' .*\n- '7' ") as info:
        convert_batch_norms(model)
    assert isinstance(info.value.__cause__, ValueError)
    assert [(name, module) for name, module in model.named_modules()] == before
    assert all(torch.equal(model.state_dict()[key], value) for key, value in values.items())
    # With batch_norms: 'inner.0' comes last, after four modules that were built but not put in.
    port = KerasPort()
    before = list(port.named_modules())
    names = {**KERAS_PORT_NAMES, "inner.0": "missing"}
    _problem(port, _keras_batch_norms(), names=names, match=r"'inner\.0' .*'missing'")
    assert list(port.named_modules()) == before


@pytest.mark.parametrize(
    ("arguments", "keywords", "match"),
    [
        ((object(),), {}, "model must be a torch.nn.Module"),
        ((nn.BatchNorm2d(3),), {}, r"model is itself a BatchNorm2d.*BatchNorm\.from_torch"),
        ((nn.Sequential(), [("bn", None)]), {}, "batch_norms must be a mapping"),
        ((nn.Sequential(), {}), {"names": ["0"]}, "names must be a mapping, a function or None"),
        ((nn.Sequential(),), {"names": {"0": "bn"}}, "names .* needs batch_norms"),
    ],
)
def test_bad_arguments(arguments, keywords, match):
    with pytest.raises(TypeError, match=match):
        convert_batch_norms(*arguments, **keywords)


def test_empty_batch_norms_on_a_model_without_batch_norms():
    model = nn.Sequential(nn.Linear(2, 2))
    returned, report = convert_batch_norms(model, {})
    assert returned is model and len(report) == 0

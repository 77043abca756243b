"""``bn_portable.torch.convert_batch_norms``: every batch norm of a PyTorch model at once.

Without TensorFlow's variables the converted model must compute what PyTorch
computes (``from_torch``'s contract); with the Keras layers of tests/data/porting
each converted module must reproduce what TensorFlow recorded for that layer
(inference, one training step, the variables after it), channels first.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="bn_portable.torch needs PyTorch, which is not installed")

from conformance.compare import error_in_epsilons, tolerance  # noqa: E402

import bn_portable as bn  # noqa: E402
from bn_portable.porting import load_keras_batch_norm  # noqa: E402
from bn_portable.torch import (  # noqa: E402
    BatchNorm,
    ConversionReport,
    ConvertedBatchNorm,
    convert_batch_norms,
)

pytestmark = pytest.mark.home_backend("torch")

nn = torch.nn
DATA = Path(__file__).parent / "data" / "porting"
KERAS_LAYERS = json.loads((DATA / "manifest.json").read_text())["keras_layers"]
with np.load(DATA / "keras.npz") as _file:
    KERAS = {key: _file[key] for key in _file.files}


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


def _torch_batch_norms(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


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


def _keras_batch_norms():
    pytest.importorskip("h5py", reason="reading Keras files needs h5py (the h5py extra)")
    return {layer: load_keras_batch_norm(DATA / "keras_model.keras", layer) for layer in KERAS_LAYERS}


class KerasPort(nn.Module):
    """The batch norms of tests/data/porting's Keras model, as a PyTorch port holds them."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))  # bn_conv (NHWC in Keras)
        self.bn_nchw = nn.BatchNorm2d(3)
        self.bn_renorm = nn.BatchNorm2d(3)
        self.head = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5))  # bn_dense
        self.inner = nn.Sequential(nn.BatchNorm2d(3))  # bn_inner, in a nested Keras model


KERAS_PORT_NAMES = {
    "stem.1": "bn_conv", "bn_nchw": "bn_nchw", "bn_renorm": "bn_renorm", "head.1": "bn_dense",
    "inner.0": "bn_inner",
}


def _to_torch_layout(x, layer):
    """Keras' input as PyTorch holds it: channels on axis 1 (NHWC transposed)."""
    channels_last = x.ndim == 4 and KERAS_LAYERS[layer]["options"].get("axis") != 1
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if channels_last else x))


def _to_keras_layout(y, layer):
    y = y.detach().numpy()
    channels_last = y.ndim == 4 and KERAS_LAYERS[layer]["options"].get("axis") != 1
    return y.transpose(0, 2, 3, 1) if channels_last else y


def _assert_close_to_tensorflow(actual, expected, what, source=None):
    error = error_in_epsilons(actual, expected, "float32", source=source, channel_axis=-1 % expected.ndim)
    assert error <= tolerance("float32", "y", None), f"{what}: {error:.1f} float32 epsilons from TensorFlow"


def _assert_reproduces_tensorflow(model, torch_names):
    for torch_name, layer in torch_names.items():
        module = model.get_submodule(torch_name)
        assert isinstance(module, BatchNorm) and module.data_format == "NCHW"
        x = KERAS[f"input|{layer}"]
        xt = _to_torch_layout(x, layer)
        channel_axis = 1 if KERAS_LAYERS[layer]["options"].get("axis") == 1 else x.ndim - 1
        source = np.moveaxis(x, channel_axis, -1)
        with torch.no_grad():
            y_infer = module.eval()(xt)
            y_train = module.train()(xt)
        for what, y in (("infer", y_infer), ("train", y_train)):
            expected = np.moveaxis(KERAS[f"{what}|{layer}"], channel_axis, -1)
            actual = np.moveaxis(_to_keras_layout(y, layer), channel_axis, -1)
            _assert_close_to_tensorflow(actual, expected, f"{layer} {what}", source=source)
        for field in module.fields:
            expected = KERAS[f"after|{layer}/{field}"]
            _assert_close_to_tensorflow(getattr(module, field).detach().numpy(), expected, f"{layer} {field}")


@pytest.mark.parametrize("form", ["mapping", "callable"])
def test_keras_layers_reproduce_tensorflow(form):
    batch_norms = _keras_batch_norms()
    model = KerasPort()
    names = KERAS_PORT_NAMES if form == "mapping" else lambda name: KERAS_PORT_NAMES[name]
    returned, report = convert_batch_norms(model, batch_norms, names=names)
    assert returned is model and not _torch_batch_norms(model)
    assert {e.name: e.tf_name for e in report} == KERAS_PORT_NAMES
    _assert_reproduces_tensorflow(model, KERAS_PORT_NAMES)


def test_keras_layers_by_their_own_names():
    batch_norms = _keras_batch_norms()
    model = nn.ModuleDict({
        layer: (nn.BatchNorm1d if len(KERAS_LAYERS[layer]["shape"]) == 2 else nn.BatchNorm2d)(
            KERAS_LAYERS[layer]["shape"][1 if KERAS_LAYERS[layer]["options"].get("axis") == 1 else -1]
        )
        for layer in KERAS_LAYERS
    })
    _, report = convert_batch_norms(model, batch_norms)
    assert [e.tf_name for e in report] == [e.name for e in report] == list(KERAS_LAYERS)
    for layer, (state, _) in batch_norms.items():
        for field in model[layer].fields:
            np.testing.assert_array_equal(getattr(model[layer], field).detach().numpy(), getattr(state, field))
    _assert_reproduces_tensorflow(model, {layer: layer for layer in KERAS_LAYERS})


def test_report_lists_what_the_tensorflow_layers_change():
    model = KerasPort()
    _, report = convert_batch_norms(model, _keras_batch_norms(), names=KERAS_PORT_NAMES)
    # bn_dense: Keras momentum 0.95, epsilon 0.01, center=False, no fused kernel for rank 2;
    # the BatchNorm1d had PyTorch's defaults (momentum 0.1, eps 1e-5, affine).
    changes = report["head.1"].changes
    assert {option: changes[option] for option in ("decay", "epsilon", "center", "fused")} == {
        "decay": (pytest.approx(0.9), 0.95), "epsilon": (1e-5, 0.01), "center": (True, False),
        "fused": (True, False),
    }
    assert "scale" not in changes and "renorm" not in changes and "dtype" not in changes
    assert report["head.1"].torch_type is nn.BatchNorm1d and report["head.1"].num_features == 5
    renorm = report["bn_renorm"].changes
    assert renorm["renorm"] == (False, True) and renorm["renorm_decay"] == (0.99, 0.8)
    assert renorm["renorm_clipping"] == (None, {"rmax": 2.0, "rmin": 0.5, "dmax": 1.0})
    assert "data_format" not in report["stem.1"].changes  # channels first, like the torch module
    assert model.get_submodule("head.1").beta is None  # center=False: TensorFlow's layer decides
    row = next(line for line in str(report).splitlines() if line.startswith("head.1"))
    assert row.split()[:4] == ["head.1", "BatchNorm1d", "5", "bn_dense"]
    assert "epsilon 1e-05 -> 0.01" in row and "center True -> False" in row


def _bn_conv():
    return _keras_batch_norms()["bn_conv"]


def test_dtype_momentum_none_and_device_follow_the_documented_choices():
    state, options = _bn_conv()
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=None).double())
    _, report = convert_batch_norms(model, {"bn_conv": (state, options)}, names={"0": "bn_conv"})
    assert model[0].moving_mean.dtype == torch.float32  # as TensorFlow stored it
    assert model[0].moving_mean.device == torch.device("cpu")
    assert dict(report["0"].changes)["dtype"] == (torch.float64, torch.float32)
    assert report["0"].changes["decay"] == (None, 0.9)


def test_frozen_affine_parameters_stay_frozen_with_tensorflow_state():
    state, options = _bn_conv()
    frozen = nn.BatchNorm2d(3).eval()
    frozen.bias.requires_grad_(False)
    model = nn.Sequential(frozen)
    convert_batch_norms(model, {"bn_conv": (state, options)}, names={"0": "bn_conv"})
    assert model[0].gamma.requires_grad and not model[0].beta.requires_grad
    assert not model[0].training


def test_fused_layer_on_a_batch_norm_1d_runs_the_fused_kernel_for_rank_2():
    """Not refused: TensorFlow's fused kernel takes rank-2 input (tf-slim's fused path),
    whose moving variance moves toward the Bessel-corrected batch variance."""
    state, options = _bn_conv()
    assert options["fused"]
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    convert_batch_norms(model, {"bn_conv": (state, options)}, names={"1": "bn_conv"})
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    model[1](x)
    unbiased = x.var(dim=0, unbiased=True)
    expected = 0.9 * torch.from_numpy(state.moving_variance) + 0.1 * unbiased
    torch.testing.assert_close(model[1].moving_variance, expected, rtol=1e-5, atol=1e-6)


def _problem(model, *args, match, **kwargs):
    with pytest.raises(ValueError, match=match):
        convert_batch_norms(model, *args, **kwargs)


def test_refusals_name_the_module_and_the_layer():
    batch_norms = _keras_batch_norms()
    state, options = batch_norms["bn_conv"]
    one = {"bn_conv": (state, options)}
    seq = nn.Sequential
    _problem(seq(nn.BatchNorm2d(3)), one, names={"0": "nope", "x": "y"},
             match=r"'0' \(BatchNorm2d, TensorFlow layer 'nope'\): batch_norms has no layer 'nope'")
    _problem(seq(nn.BatchNorm2d(4)), one, names={"0": "bn_conv"},
             match=r"'0' \(BatchNorm2d, TensorFlow layer 'bn_conv'\): the state's moving_mean has "
             r"shape \(3,\), the module 4 channels")
    _problem(seq(nn.BatchNorm2d(3)), batch_norms, names={"0": "bn_conv"},
             match=r"TensorFlow layer 'bn_dense' of batch_norms: no module of the model is given it")
    _problem(seq(nn.BatchNorm2d(3), nn.BatchNorm2d(3)), one, names={"0": "bn_conv"},
             match=r"'1' \(BatchNorm2d\): names has no TensorFlow layer for it")
    _problem(seq(nn.BatchNorm2d(3)), one, names={"0": "bn_conv", "1": "bn_conv"},
             match=r"names maps '1', which is no batch norm of the model")
    _problem(seq(nn.BatchNorm2d(3), nn.BatchNorm2d(3)), one, names=lambda name: "bn_conv",
             match=r"'1' \(BatchNorm2d\): TensorFlow layer 'bn_conv' is given to '0' too")
    _problem(seq(nn.BatchNorm2d(3)), one, names=lambda name: None,
             match=r"'0' \(BatchNorm2d\): names gives None, not a TensorFlow layer name")
    _problem(seq(nn.BatchNorm2d(3, track_running_stats=False)), one, names={"0": "bn_conv"},
             match=r"'0' \(BatchNorm2d, TensorFlow layer 'bn_conv'\): .*track_running_stats=False")
    _problem(seq(nn.LazyBatchNorm2d()), one, names={"0": "bn_conv"},
             match=r"'0' \(LazyBatchNorm2d, TensorFlow layer 'bn_conv'\): a lazy batch norm")
    _problem(seq(nn.SyncBatchNorm(3)), one, names={"0": "bn_conv"},
             match=r"'0' \(SyncBatchNorm, TensorFlow layer 'bn_conv'\): only torch.nn.BatchNorm1d")
    _problem(seq(nn.BatchNorm2d(3)), {"bn_conv": (state,)}, names={"0": "bn_conv"},
             match=r"'0' .*'bn_conv'\): its batch_norms entry must be a \(BatchNormState, options")
    # Options go to BatchNorm.from_state as they are, unknown ones included.
    _problem(seq(nn.BatchNorm2d(3)), {"bn_conv": (state, {**options, "bogus": 1})}, names={"0": "bn_conv"},
             match=r"'0' \(BatchNorm2d, TensorFlow layer 'bn_conv'\): .*unknown option 'bogus'")
    # A state that contradicts its own options (center=False, but a beta).
    _problem(seq(nn.BatchNorm2d(3)), {"bn_conv": (state, {**options, "center": False})},
             names={"0": "bn_conv"}, match=r"'0' .*'bn_conv'\): state has the fields beta")


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


def test_replacements_go_to_the_modules_device_here_meta():
    """The device follows the module (PyTorch's meta device stands in for an accelerator)."""
    state, options = _bn_conv()
    model = nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm2d(3)).to("meta")
    convert_batch_norms(model, {"a": (state, options), "b": (state, options)}, names={"0": "a", "1": "b"})
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert isinstance(model[1], BatchNorm)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_replacements_go_to_the_modules_device():
    state, options = _bn_conv()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.BatchNorm2d(3)).cuda()
    batch_norms = {"a": (state, options), "b": (state, options)}
    _, report = convert_batch_norms(model, batch_norms, names={"1": "a", "2": "b"})
    assert all(t.device.type == "cuda" for t in [*model.parameters(), *model.buffers()])
    x = torch.from_numpy(KERAS["input|bn_conv"]).permute(0, 3, 1, 2).contiguous()
    cpu = BatchNorm.from_state(state, **{**options, "data_format": "NCHW"}).eval()
    with torch.no_grad():
        torch.testing.assert_close(model[1].eval()(x.cuda()).cpu(), cpu(x), rtol=1e-5, atol=1e-5)
    assert report["1"].tf_name == "a" and "dtype" not in report["1"].changes


def test_state_values_as_in_bn_portable():
    """The state's values arrive unchanged (float32, as TensorFlow stored them)."""
    state = bn.BatchNormState(
        beta=np.full(2, 0.5, np.float32), moving_mean=np.array([1.0, 2.0], np.float32),
        moving_variance=np.array([3.0, 4.0], np.float32),
    )
    model = nn.Sequential(nn.BatchNorm1d(2, affine=False))
    _, report = convert_batch_norms(model, {"0": (state, {"decay": 0.5})})
    assert model[0].fields == ("beta", "moving_mean", "moving_variance")
    assert model[0].moving_variance.tolist() == [3.0, 4.0] and model[0].beta.tolist() == [0.5, 0.5]
    # The TensorFlow layer has a beta where the PyTorch module had no affine parameters.
    assert report["0"].changes["center"] == (False, True) and report["0"].changes["decay"][1] == 0.5

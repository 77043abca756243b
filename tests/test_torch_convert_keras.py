"""``bn_portable.torch.convert_batch_norms`` with the Keras layers of tests/data/porting.

Each converted module must reproduce what TensorFlow recorded for that layer
(inference, one training step, the variables after it), channels first.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="bn_portable.torch needs PyTorch, which is not installed")

from conformance.compare import error_in_epsilons, tolerance  # noqa: E402

import bn_portable as bn  # noqa: E402
from bn_portable.torch import BatchNorm, convert_batch_norms  # noqa: E402
from torch_convert_cases import (  # noqa: E402
    DATA,
    KERAS_LAYERS,
    KERAS_PORT_NAMES,
    KerasPort,
    _keras_batch_norms,
    _problem,
    _torch_batch_norms,
)

pytestmark = pytest.mark.home_backend("torch")

nn = torch.nn
with np.load(DATA / "keras.npz") as _file:
    KERAS = {key: _file[key] for key in _file.files}


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

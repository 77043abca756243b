"""Whole models against files TensorFlow wrote (tests/data/porting/models, see its manifest).

``conformance/keras_models.py`` trained a ``tf_keras.applications`` MobileNetV2
with ``fit`` and saved it as ``.h5`` and ``.keras``, recording each batch-norm
layer's input and TensorFlow's outputs and variables; gave one batch to a small
Keras model in each way Keras 2 runs (eager, ``tf.function``, ``fit``, XLA, a
TF1 graph); and trained tf-slim layers with ``ExponentialMovingAverage``
shadows in a TF1 checkpoint. Here every layer comes back through the porting
helpers only and must reproduce TensorFlow within the conformance tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bn_portable as bn
from bn_portable.porting import find_tf_batch_norms, load_keras_batch_norms, state_from_tf_variables
from porting_replay import TOLERANCE, arrays, assert_matches_tensorflow, section, worst_error

DATA = Path(__file__).parent / "data" / "porting" / "models"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
MOBILENET = arrays(DATA / "mobilenet_v2.npz")
MODES = arrays(DATA / "keras_modes.npz")
SLIM_EMA = arrays(DATA / "slim_ema.npz")
MOBILENET_LAYERS = sorted(section(MOBILENET, "input"))

#: Each way Keras 2 ran the modes model, and the ``execution`` that reproduces it.
EXECUTION_OF_MODE = {"eager": "eager", "function": "eager", "fit": "eager", "xla": "xla", "graph": "graph"}


@pytest.fixture(scope="module")
def mobilenet():
    pytest.importorskip("h5py", reason="reading Keras files needs h5py (the h5py extra)")
    return load_keras_batch_norms(DATA / "mobilenet_v2.keras")


def test_both_files_give_every_layer_the_same_state_and_options(mobilenet):
    from_h5 = load_keras_batch_norms(DATA / "mobilenet_v2.h5")
    assert len(mobilenet) == 52 and sorted(mobilenet) == sorted(from_h5) == MOBILENET_LAYERS
    for name, (state, options) in mobilenet.items():
        h5_state, h5_options = from_h5[name]
        assert options == h5_options == {
            "decay": 0.999, "epsilon": 0.001, "data_format": "NHWC", "fused": True,
            "execution": "eager", "center": True, "scale": True,
            "zero_debias_moving_mean": False, "renorm": False,
        }
        for field in state._fields:
            np.testing.assert_array_equal(getattr(state, field), getattr(h5_state, field))


def test_every_mobilenet_layer_matches_tensorflow(backend, mobilenet):
    after = section(MOBILENET, "after")
    for name, (state, options) in mobilenet.items():
        expected_after = bn.BatchNormState(**{
            field: after[f"{name}/{field}"] for field in ("beta", "gamma", "moving_mean", "moving_variance")
        })
        assert_matches_tensorflow(
            backend, state, options, MOBILENET[f"input|{name}"], MOBILENET[f"infer|{name}"],
            MOBILENET[f"train|{name}"], expected_after,
        )


def _mode_options(name: str, execution: str) -> tuple[bn.BatchNormState, dict]:
    shape, given = MANIFEST["mode_layers"][name]["shape"], MANIFEST["mode_layers"][name]["options"]
    before = section(MODES, "before")
    state = bn.BatchNormState(**{f: before[f"{name}/{f}"] for f in ("beta", "gamma", "moving_mean", "moving_variance")})
    nchw = given.get("axis") == 1 or len(shape) == 2
    options = {
        "decay": given["momentum"], "epsilon": 0.001, "scale": True, "fused": len(shape) in (4, 5),
        "data_format": "NCHW" if nchw else "NHWC", "execution": execution,
    }
    return state, options


def _mode_errors(backend, name: str, mode: str, execution: str) -> dict[str, float]:
    state, options = _mode_options(name, execution)
    x = MODES[f"input|{name}"]
    on_backend = state._replace(**{f: backend.asarray(getattr(state, f), "float32") for f in state._fields if getattr(state, f) is not None})
    _, new = backend.call(lambda x_, s_: bn.batch_norm(x_, s_, **options), backend.asarray(x, "float32"), on_backend)
    results = {
        field: (backend.to_numpy(getattr(new, field)), MODES[f"after|{mode}|{name}/{field}"], None)
        for field in ("moving_mean", "moving_variance")
    }
    return worst_error(results, 0)


@pytest.mark.parametrize("mode", MANIFEST["modes"])
def test_each_keras_execution_mode_is_reproduced(backend, mode):
    for name in MANIFEST["mode_layers"]:
        errors = _mode_errors(backend, name, mode, EXECUTION_OF_MODE[mode])
        assert max(errors.values()) <= TOLERANCE, f"{name} after {mode}: {errors} float32 epsilons"


@pytest.mark.parametrize(("mode", "wrong"), [("eager", "graph"), ("fit", "xla"), ("graph", "eager")])
def test_the_wrong_execution_misses_the_fused_moving_mean(mode, wrong):
    from conformance.backends import by_name

    numpy = by_name("numpy")
    for name in ("fused_nhwc", "fused_nchw"):  # momentum 0.999 and 0.9999
        assert _mode_errors(numpy, name, mode, wrong)["moving_mean"] > TOLERANCE
    # The non-fused path is the same in every mode.
    assert max(_mode_errors(numpy, "dense", mode, wrong).values()) <= TOLERANCE


def _slim_layers(ema: bool):
    checkpoint = section(SLIM_EMA, "checkpoint")
    per_layer = {scope: layer["options"] for scope, layer in MANIFEST["slim_ema_layers"].items()}
    return find_tf_batch_norms(checkpoint, ema=ema, layer_options=per_layer, epsilon=0.001)


@pytest.mark.parametrize("ema", [True, False])
def test_tf1_checkpoint_with_exponential_moving_averages(backend, ema):
    layers = _slim_layers(ema)
    assert sorted(layers) == sorted(MANIFEST["slim_ema_layers"])
    untracked = tuple(sorted(set(MANIFEST["slim_ema_layers"]) - set(MANIFEST["ema_scopes"])))
    assert layers.without_ema == (untracked if ema else ())
    expected = section(SLIM_EMA, "infer_ema" if ema else "infer")
    for scope, (state, options) in layers.items():
        x = SLIM_EMA[f"input|{scope}"]
        channel_axis = 1 if options.get("data_format") == "NCHW" else x.ndim - 1
        on_backend = state._replace(**{f: backend.asarray(getattr(state, f), "float32") for f in state._fields if getattr(state, f) is not None})
        y, _ = backend.call(
            lambda x_, s_, o=options: bn.batch_norm(x_, s_, **{**o, "is_training": False}),
            backend.asarray(x, "float32"), on_backend,
        )
        error = worst_error({"y": (backend.to_numpy(y), expected[scope], x)}, channel_axis)["y"]
        assert error <= TOLERANCE, f"{scope}: {error:.1f} float32 epsilons from TensorFlow"


def test_the_shadows_are_what_ema_reads():
    checkpoint = section(SLIM_EMA, "checkpoint")
    shadowed, raw = _slim_layers(ema=True), _slim_layers(ema=False)
    for scope in MANIFEST["ema_scopes"]:
        np.testing.assert_array_equal(
            shadowed[scope][0].moving_mean, checkpoint[f"{scope}/moving_mean/ExponentialMovingAverage"]
        )
        assert not np.array_equal(shadowed[scope][0].gamma, raw[scope][0].gamma)
    single, _ = state_from_tf_variables(checkpoint, "net/bn1")
    np.testing.assert_array_equal(single.gamma, raw["net/bn1"][0].gamma)


def _config(*layers: dict) -> dict:
    return {"class_name": "Functional", "config": {"name": "m", "layers": list(layers)}}


def _layer(kind: str, name: str, source: str | None, **config) -> dict:
    return {"class_name": kind, "name": name, "config": {"name": name, **config},
            "inbound_nodes": [] if source is None else [[[source, 0, 0, {}]]]}


def test_ranks_are_followed_through_the_graph_or_asked_for():
    pytest.importorskip("h5py", reason="reading Keras files needs h5py (the h5py extra)")
    weights = Path(__file__).parent / "data" / "porting" / "keras_weights.h5"
    bn_options = {"axis": [1], "momentum": 0.8, "epsilon": 0.001}
    model = _config(
        _layer("InputLayer", "x", None, batch_input_shape=[None, 48]),
        _layer("Reshape", "to_images", "x", target_shape=[3, 4, 4]),  # rank 4
        _layer("BatchNormalization", "bn_nchw", "to_images", **bn_options),
        _layer("Lambda", "custom", "bn_nchw"),  # unknown: the rank after it is too
        _layer("BatchNormalization", "bn_dense", "custom", **bn_options, center=False),
    )
    with pytest.raises(ValueError, match=r"layer 'bn_dense' has axis=1.*pass input_rank"):
        load_keras_batch_norms(weights, model_config=model)
    layers = load_keras_batch_norms(weights, model_config=json.dumps(model), input_ranks={"bn_dense": 2})
    assert layers["bn_nchw"][1]["fused"] and layers["bn_nchw"][1]["data_format"] == "NCHW"
    assert not layers["bn_dense"][1]["fused"] and layers["bn_dense"][0].beta is None
    with pytest.raises(TypeError, match="model_config must be"):
        load_keras_batch_norms(weights, model_config=[model])
    with pytest.raises(ValueError, match=r"weights only.*pass model_config"):
        load_keras_batch_norms(weights)
    with pytest.raises(ValueError, match="execution must be one of"):
        load_keras_batch_norms(DATA / "mobilenet_v2.keras", execution="tf2")


def test_find_tf_batch_norms_refuses_unknown_layer_options():
    checkpoint = section(SLIM_EMA, "checkpoint")
    with pytest.raises(ValueError, match="layer_options names 'net/bn9'"):
        find_tf_batch_norms(checkpoint, layer_options={"net/bn9": {"decay": 0.9}})
    with pytest.raises(TypeError, match="ema must be a bool"):
        find_tf_batch_norms(checkpoint, ema="yes")
    with pytest.raises(TypeError, match="unknown batch_norm option 'momentum'"):
        find_tf_batch_norms(checkpoint, momentum=0.9)


def _errors_against_tensorflow(name: str, y_infer, y_train, state) -> dict[str, float]:
    after = section(MOBILENET, "after")
    x = MOBILENET[f"input|{name}"]
    results = {
        "infer": (y_infer, MOBILENET[f"infer|{name}"], x),
        "train": (y_train, MOBILENET[f"train|{name}"], x),
        **{field: (getattr(state, field), after[f"{name}/{field}"], None)
           for field in ("beta", "gamma", "moving_mean", "moving_variance")},
    }
    return worst_error(results, x.ndim - 1)


def test_mobilenet_into_a_pytorch_model(mobilenet):
    """A PyTorch model with one ``nn.BatchNorm2d`` per Keras layer (NCHW, PyTorch's
    defaults), converted and loaded in one call, replays every layer."""
    torch = pytest.importorskip("torch", reason="bn_portable.torch needs PyTorch")
    from bn_portable.torch import convert_batch_norms

    def torch_name(keras_name: str) -> str:
        return keras_name.lower()

    model = torch.nn.ModuleDict({
        torch_name(name): torch.nn.BatchNorm2d(state.moving_mean.shape[0])
        for name, (state, _) in mobilenet.items()
    })
    keras_names = {torch_name(name): name for name in mobilenet}
    model, report = convert_batch_norms(model, mobilenet, names=keras_names.__getitem__)
    assert len(report.modules) == 52 and {m.tf_name for m in report.modules} == set(mobilenet)
    for module_name, module in model.items():
        name = keras_names[module_name]
        x = torch.from_numpy(MOBILENET[f"input|{name}"]).permute(0, 3, 1, 2)  # NHWC -> NCHW
        with torch.no_grad():
            y_infer = module.eval()(x).permute(0, 2, 3, 1).numpy()
            y_train = module.train()(x).permute(0, 2, 3, 1).numpy()
        state = module.state._replace(**{
            f: getattr(module.state, f).detach().numpy() for f in ("beta", "gamma", "moving_mean", "moving_variance")
        })
        errors = _errors_against_tensorflow(name, y_infer, y_train, state)
        assert max(errors.values()) <= TOLERANCE, f"{name}: {errors}"


def test_mobilenet_into_flax_modules(mobilenet):
    pytest.importorskip("flax", reason="bn_portable.flax needs Flax")
    import jax.numpy as jnp

    from bn_portable.flax import BatchNorm

    for name, (state, options) in mobilenet.items():
        module = BatchNorm.from_state(state, **options)
        x = jnp.asarray(MOBILENET[f"input|{name}"])
        y_infer = np.asarray(module(x, use_running_average=True))
        module.train()
        y_train = np.asarray(module(x))
        new = module.state._replace(**{
            f: np.asarray(getattr(module.state, f)) for f in ("beta", "gamma", "moving_mean", "moving_variance")
        })
        errors = _errors_against_tensorflow(name, y_infer, y_train, new)
        assert max(errors.values()) <= TOLERANCE, f"{name}: {errors}"

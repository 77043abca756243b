"""Porting helpers against files TensorFlow wrote (tests/data/porting, see its manifest).

``conformance/checkpoints.py`` trained tf-slim and Keras batch-norm layers for
three steps, saved them (a TF1 checkpoint, a TF2 object checkpoint, Keras
``.h5`` and ``.keras`` files) and recorded TensorFlow's outputs for a fixed
input: inference, one more training step and the variables after it. Here the
state and options come back through the helpers only, and bn_portable's
outputs must equal TensorFlow's within the conformance tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conformance.compare import error_in_epsilons, tolerance

import bn_portable as bn
from bn_portable.porting import load_keras_batch_norm, state_from_tf_variables
from porting_replay import arrays, assert_matches_tensorflow, section

DATA = Path(__file__).parent / "data" / "porting"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
SLIM_LAYERS = MANIFEST["slim_layers"]
KERAS_LAYERS = MANIFEST["keras_layers"]


SLIM = arrays(DATA / "slim.npz")
KERAS = arrays(DATA / "keras.npz")


def _section(recorded: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return section(recorded, prefix)


def _h5py():
    return pytest.importorskip("h5py", reason="reading Keras files needs h5py (the h5py extra)")


_assert_matches_tensorflow = assert_matches_tensorflow


@pytest.mark.parametrize("scope", sorted(SLIM_LAYERS))
def test_tf_slim_checkpoint_round_trip(backend, scope):
    given = dict(SLIM_LAYERS[scope]["options"])
    state, options = bn.BatchNormState.from_tf_variables(_section(SLIM, "checkpoint"), scope, **given)
    assert options == {"center": True, "zero_debias_moving_mean": False, "renorm": False, **given}
    after, _ = state_from_tf_variables(_section(SLIM, "after"), scope)
    _assert_matches_tensorflow(
        backend, state, options, SLIM[f"input|{scope}"], SLIM[f"infer|{scope}"], SLIM[f"train|{scope}"], after
    )


@pytest.mark.parametrize("layer", list(KERAS_LAYERS))
@pytest.mark.parametrize("file", ["keras_model.h5", "keras_model.keras"])
def test_keras_file_round_trip(backend, layer, file):
    _h5py()
    rank = len(KERAS_LAYERS[layer]["shape"])
    state, options = load_keras_batch_norm(DATA / file, layer, input_rank=rank)
    given = KERAS_LAYERS[layer]["options"]
    assert options["decay"] == given["momentum"]
    assert options["epsilon"] == given.get("epsilon", 0.001)  # Keras' default
    assert options["data_format"] == ("NCHW" if given.get("axis") == 1 or rank == 2 else "NHWC")
    assert options["fused"] == (rank in (4, 5) and not given.get("renorm", False))
    # The same values as the TF2 object checkpoint of the same model holds.
    from_checkpoint, _ = bn.BatchNormState.from_tf_variables(
        _section(KERAS, "checkpoint"), KERAS_LAYERS[layer]["checkpoint_scope"]
    )
    for field in state._fields:
        np.testing.assert_array_equal(getattr(state, field), getattr(from_checkpoint, field))
    after, _ = state_from_tf_variables(_section(KERAS, "after"), layer)
    _assert_matches_tensorflow(
        backend, state, options, KERAS[f"input|{layer}"], KERAS[f"infer|{layer}"], KERAS[f"train|{layer}"], after
    )


def test_keras_input_rank_from_either_file():
    _h5py()
    # The .keras archive records the rank; in the .h5 it is followed through the graph.
    for file in ("keras_model.keras", "keras_model.h5"):
        _, options = load_keras_batch_norm(DATA / file, "bn_nchw")
        assert options["fused"] and options["data_format"] == "NCHW"
        _, options = load_keras_batch_norm(DATA / file, "bn_dense")
        assert not options["fused"] and options["data_format"] == "NCHW"
    # Nothing to follow: a weights-only file and a layer config with axis=[1].
    with pytest.raises(ValueError, match="pass input_rank"):
        load_keras_batch_norm(DATA / "keras_weights.h5", "bn_nchw", config={"axis": [1]})


def test_keras_weights_only_file_needs_the_config():
    _h5py()
    with pytest.raises(ValueError, match=r"pass config=layer\.get_config\(\)"):
        load_keras_batch_norm(DATA / "keras_weights.h5", "bn_conv")
    config = {"axis": [3], **KERAS_LAYERS["bn_conv"]["options"]}
    state, options = load_keras_batch_norm(DATA / "keras_weights.h5", "bn_conv", config=config)
    reference, reference_options = load_keras_batch_norm(DATA / "keras_model.h5", "bn_conv")
    assert options == reference_options
    for field in state._fields:
        np.testing.assert_array_equal(getattr(state, field), getattr(reference, field))


def test_keras_unknown_layer():
    _h5py()
    for file in ("keras_model.h5", "keras_model.keras"):
        with pytest.raises(ValueError, match="no layer named 'nope'"):
            load_keras_batch_norm(DATA / file, "nope")


def test_names_with_suffixes_and_a_single_scope():
    mapping = {
        "net/bn/moving_mean:0": np.zeros(3, np.float32),
        "net/bn/moving_variance:0": np.ones(3, np.float32),
        "net/bn/moving_mean/biased:0": np.zeros(3, np.float32),
        "net/bn/moving_mean/local_step:0": np.zeros((), np.float32),
        "net/other/moving_mean": np.zeros(4, np.float32),
    }
    state, options = state_from_tf_variables(mapping, "net/bn/", decay=0.9)
    assert options == {
        "decay": 0.9, "center": False, "scale": False, "zero_debias_moving_mean": True, "renorm": False
    }
    assert state.local_step.shape == () and state.beta is None


@pytest.mark.parametrize(
    ("mapping", "options", "error", "match"),
    [
        ({}, {}, ValueError, "no batch-norm layer under scope 'bn'"),
        ({"bn/moving_mean": np.zeros(3)}, {}, ValueError, "bn/moving_variance"),
        ({"bn/moving_mean": np.zeros(3), "bn/moving_variance": np.ones(4)}, {}, ValueError,
         r"moving_variance of the variables under 'bn' must have shape \(3,\)"),
        ({"bn/moving_mean": np.zeros(3), "bn/moving_variance": [1.0, 1.0, 1.0]}, {}, TypeError,
         "moving_variance of the variables under 'bn' must be an array"),
        ({"bn/moving_mean": np.zeros(3), "bn/moving_variance": np.ones(3)}, {"scale": True}, ValueError,
         "scale=True was given, but the variables under 'bn' say scale=False"),
        ({"bn/moving_mean": np.zeros(3), "bn/moving_variance": np.ones(3)}, {"momentum": 0.9}, TypeError,
         "unknown batch_norm option 'momentum'"),
        ({"bn/moving_mean": np.zeros(3), "bn/moving_variance": np.ones(3)}, {"decay": 1.5}, ValueError,
         "decay"),
        ({"bn/moving_mean": np.zeros(3), "bn/moving_mean:0": np.zeros(3), "bn/moving_variance": np.ones(3)},
         {}, ValueError, "twice"),
    ],
)
def test_bad_mappings(mapping, options, error, match):
    with pytest.raises(error, match=match):
        bn.BatchNormState.from_tf_variables(mapping, "bn", **options)


def test_torch_module_from_a_keras_file():
    _h5py()
    torch = pytest.importorskip("torch", reason="bn_portable.torch needs PyTorch")
    from bn_portable.torch import BatchNorm

    state, options = load_keras_batch_norm(DATA / "keras_model.keras", "bn_nchw")
    module = BatchNorm.from_state(state, **options).eval()
    with torch.no_grad():
        y = module(torch.from_numpy(KERAS["input|bn_nchw"]))
    error = error_in_epsilons(y.numpy(), KERAS["infer|bn_nchw"], "float32", source=KERAS["input|bn_nchw"], channel_axis=1)
    assert error <= tolerance("float32", "y", None)


def test_importing_imports_neither_torch_nor_h5py():
    import os
    import subprocess
    import sys

    package = bn.__name__  # whatever the package is called here (a vendored copy too)
    code = (
        f"import sys, {package}, {package}.porting; "
        "print(sorted(m for m in ('torch', 'h5py') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert result.stdout.strip() == "[]"


def test_find_tf_batch_norms_finds_every_layer_of_both_checkpoints():
    from bn_portable.porting import find_tf_batch_norms

    # TF1: tf-slim names, a zero-debiased layer and a renorm layer among them.
    slim = find_tf_batch_norms(
        _section(SLIM, "checkpoint"),
        layer_options={scope: layer["options"] for scope, layer in SLIM_LAYERS.items()},
    )
    assert sorted(slim) == sorted(SLIM_LAYERS)
    assert slim["slim_legacy"][1]["zero_debias_moving_mean"] and slim["slim_renorm"][1]["renorm"]
    for scope, (state, options) in slim.items():
        single, single_options = state_from_tf_variables(
            _section(SLIM, "checkpoint"), scope, **SLIM_LAYERS[scope]["options"]
        )
        assert options == single_options
        for field in state._fields:
            np.testing.assert_array_equal(getattr(state, field), getattr(single, field))
    # TF2 object checkpoint: Keras names under /.ATTRIBUTES/VARIABLE_VALUE, nested layers too.
    keras = find_tf_batch_norms(_section(KERAS, "checkpoint"))
    assert sorted(keras) == sorted(layer["checkpoint_scope"] for layer in KERAS_LAYERS.values())

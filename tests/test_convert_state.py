"""convert_state: values copied exactly, settings converted, differences said, no counterpart refused."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import bn_portable as bn
from bn_portable._conventions._states import NAMES
from bn_portable.conventions import convert_state

RNG = np.random.default_rng(0)
ARRAYS = {role: RNG.standard_normal(3).astype(np.float32) for role in ("scale", "offset", "mean")}
ARRAYS["variance"] = RNG.random(3).astype(np.float32) + 0.5
DECAY, EPSILON = 0.97, 1e-4


def _state(convention: str):
    scale, offset, mean, variance = NAMES[convention]
    values = {scale: ARRAYS["scale"], offset: ARRAYS["offset"], mean: ARRAYS["mean"], variance: ARRAYS["variance"]}
    if convention == "tensorflow":
        return bn.BatchNormState(**values), {"decay": DECAY, "epsilon": EPSILON}
    epsilon = "eps" if convention == "pytorch" else "epsilon"
    momentum = 1 - DECAY if convention == "pytorch" else DECAY
    return values, {"momentum": momentum, epsilon: EPSILON}


def _arrays(state, convention: str) -> list:
    get = (lambda n: getattr(state, n)) if convention == "tensorflow" else state.get
    return [get(n) for n in NAMES[convention]]


@pytest.mark.parametrize(("source", "target"), list(itertools.permutations(NAMES, 2)))
def test_every_pair_copies_the_values_and_converts_the_settings(source, target):
    state, settings = _state(source)
    converted = convert_state(state, source=source, target=target, **settings)
    # The same arrays, role for role: inference is unchanged.
    for before, after in zip(_arrays(state, source), _arrays(converted.state, target)):
        assert after is before
    epsilon = "eps" if target == "pytorch" else "epsilon"
    assert converted.settings[epsilon] == EPSILON
    if target == "tensorflow":
        assert converted.settings["decay"] == pytest.approx(DECAY, abs=1e-15)
    elif target == "pytorch":
        assert converted.settings["momentum"] == pytest.approx(1 - DECAY, abs=1e-15)
    else:
        assert converted.settings["momentum"] == pytest.approx(DECAY, abs=1e-15)
    # Round trip: the same arrays and the same settings back.
    back = convert_state(
        converted.state, source=target, target=source,
        **{k: v for k, v in converted.settings.items() if k in ("momentum", "decay", "eps", "epsilon")},
    )
    for before, after in zip(_arrays(state, source), _arrays(back.state, source)):
        assert after is before
    for name, value in settings.items():
        assert back.settings[name] == pytest.approx(value, abs=1e-15)


@pytest.mark.parametrize(
    ("source", "target", "says"),
    [
        ("pytorch", "keras", "toward the biased batch variance, where pytorch moved it toward the unbiased"),
        ("flax", "pytorch", "toward the unbiased batch variance"),
        ("keras", "flax", None),  # both move toward the biased variance: nothing differs
    ],
)
def test_the_variance_rule_is_stated_where_it_differs(source, target, says):
    state, settings = _state(source)
    notes = convert_state(state, source=source, target=target, **settings).notes
    variance_notes = [n for n in notes if "variance" in n]
    if says is None:
        assert variance_notes == []
    else:
        assert any(says in n for n in variance_notes), notes


def test_missing_parameters_are_ones_and_zeros_where_the_target_requires_them():
    state = {"moving_mean": ARRAYS["mean"], "moving_variance": ARRAYS["variance"], "gamma": None, "beta": None}
    onnx = convert_state(state, source="keras", target="onnx", momentum=0.9, epsilon=1e-3)
    np.testing.assert_array_equal(onnx.state["scale"], np.ones(3, np.float32))
    np.testing.assert_array_equal(onnx.state["B"], np.zeros(3, np.float32))
    assert any("ONNX" in n for n in onnx.notes)
    torch_state = convert_state(state, source="keras", target="pytorch", momentum=0.9, epsilon=1e-3)
    assert torch_state.settings["affine"] is False and torch_state.state["weight"] is None


def test_no_counterpart_is_refused_with_the_reason():
    state, _ = _state("pytorch")
    with pytest.raises(ValueError, match=r"momentum=None.*no counterpart"):
        convert_state(state, source="pytorch", target="keras", momentum=None, eps=1e-5)
    renorm = bn.BatchNormState(
        moving_mean=ARRAYS["mean"], moving_variance=ARRAYS["variance"], moving_stddev=ARRAYS["variance"],
        renorm_mean=ARRAYS["mean"], renorm_stddev=ARRAYS["variance"],
    )
    with pytest.raises(ValueError, match=r"renormalization.*no other convention"):
        convert_state(renorm, source="tensorflow", target="flax", decay=0.9, epsilon=1e-3)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (dict(source="caffe", target="keras"), ValueError, "source must be one of"),
        (dict(source="keras", target="mxnet", momentum=0.9, epsilon=1e-3), ValueError, "target must be one of"),
        (dict(source="keras", target="flax", momentum=0.9), TypeError, "needs the setting 'epsilon'"),
        (dict(source="keras", target="flax", momentum=0.9, epsilon=1e-3, decay=0.9), TypeError,
         "unknown setting 'decay'"),
    ],
)
def test_bad_calls(call, error, match):
    state, _ = _state("keras")
    with pytest.raises(error, match=match):
        convert_state(state, **call)


def test_bad_states():
    with pytest.raises(TypeError, match="must be a BatchNormState"):
        convert_state({}, source="tensorflow", target="keras", decay=0.9, epsilon=1e-3)
    with pytest.raises(ValueError, match="needs 'running_var'"):
        convert_state({"running_mean": ARRAYS["mean"]}, source="pytorch", target="keras", momentum=0.1, eps=1e-5)
    with pytest.raises(ValueError, match="has no 'moving_var'"):
        convert_state({"moving_var": 1}, source="keras", target="flax", momentum=0.9, epsilon=1e-3)

"""``bn_portable.flax``: from_state (replaying TensorFlow), from_flax and to_flax."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

flax = pytest.importorskip("flax", reason="bn_portable.flax needs Flax, which is not installed")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from conformance.compare import error_in_epsilons, tolerance  # noqa: E402
from flax import nnx  # noqa: E402

import bn_portable as bn  # noqa: E402
from bn_portable.flax import BatchNorm, from_flax, to_flax  # noqa: E402
from flax_cases import _input  # noqa: E402

DATA = Path(__file__).parent / "data" / "porting"
KERAS_LAYERS = json.loads((DATA / "manifest.json").read_text())["keras_layers"]
FLOAT32 = tolerance("float32", "y", None)


@pytest.mark.parametrize("layer", list(KERAS_LAYERS))
def test_from_state_replays_tensorflow(layer):
    pytest.importorskip("h5py", reason="reading Keras files needs h5py (the h5py extra)")
    from bn_portable.porting import load_keras_batch_norm

    rank = len(KERAS_LAYERS[layer]["shape"])
    state, options = load_keras_batch_norm(DATA / "keras_model.keras", layer, input_rank=rank)
    with np.load(DATA / "keras.npz") as file:
        recorded = {key: file[key] for key in file.files}
    after, _ = bn.BatchNormState.from_tf_variables(
        {k.split("|", 1)[1]: v for k, v in recorded.items() if k.startswith("after|")}, layer
    )
    module = BatchNorm.from_state(state, **options)
    assert module.data_format == options["data_format"]
    x = recorded[f"input|{layer}"]
    channel_axis = 1 if module.data_format == "NCHW" else x.ndim - 1
    results = {
        "infer": (module(jnp.asarray(x), use_running_average=True), recorded[f"infer|{layer}"]),
        "train": (module(jnp.asarray(x)), recorded[f"train|{layer}"]),
    }
    results |= {f: (getattr(module, f)[...], getattr(after, f)) for f in module.fields}
    for name, (actual, expected) in results.items():
        source = x if name in ("infer", "train") else None
        error = error_in_epsilons(
            np.asarray(actual), expected, "float32", source=source, channel_axis=channel_axis
        )
        assert error <= FLOAT32, f"{name}: {error:.1f} float32 epsilons from TensorFlow"


def test_from_state_keeps_dtypes_and_refuses_what_is_not_an_option():
    state = bn.BatchNormState(
        gamma=np.full(2, 2.0, np.float16), moving_mean=np.zeros(2, np.float16),
        moving_variance=np.ones(2, np.float16), moving_mean_biased=np.zeros(2, np.float16),
        local_step=np.zeros((), np.float16),
    )
    module = BatchNorm.from_state(state, center=False, scale=True, zero_debias_moving_mean=True)
    values = [v for v in module.state if v is not None]
    assert all(isinstance(v, jax.Array) and v.dtype == jnp.float16 for v in values)
    np.testing.assert_array_equal(module.gamma[...], state.gamma)
    assert module(_input((4, 2), dtype=np.float16)).dtype == jnp.float16  # the legacy path
    with pytest.raises(TypeError, match=r"is_training is not a BatchNorm option: .*\.train\(\)"):
        BatchNorm.from_state(state, scale=True, zero_debias_moving_mean=True, is_training=False)
    with pytest.raises(TypeError, match="cross_replica_sum is not a BatchNorm option: pass axis"):
        BatchNorm.from_state(state, cross_replica_sum=sum)
    with pytest.raises(ValueError, match=r"state has the fields gamma, moving_mean.*module has"):
        BatchNorm.from_state(state, scale=True)  # center=True would need a beta
    with pytest.raises(TypeError, match="state must be a BatchNormState"):
        BatchNorm.from_state({"moving_mean": np.zeros(2)})


def _flax_module(seed=2, **arguments):
    module = nnx.BatchNorm(3, rngs=nnx.Rngs(0), **arguments)
    rng = np.random.default_rng(seed)
    for variable in (module.mean, module.var, module.scale, module.bias):
        if variable is not None:
            variable[...] = variable[...] + jnp.asarray(0.5 * rng.random(3), jnp.float32)
    return module


def test_flax_conventions_stated_in_from_flax():
    """What from_flax's docstring says of Flax, checked against the installed Flax."""
    x = _input((8, 3))
    default = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    assert (default.epsilon, default.momentum, default.use_fast_variance) == (1e-5, 0.99, True)
    reference = nnx.BatchNorm(3, momentum=0.9, use_fast_variance=False, rngs=nnx.Rngs(0))
    reference(x)
    mean, biased = np.asarray(x).mean(0), np.asarray(x).var(0)
    # momentum weighs the old value (0 and 1 here); the variance moved toward is the biased one.
    np.testing.assert_allclose(reference.mean[...], 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(reference.var[...], 0.9 + 0.1 * biased, rtol=1e-6)
    _, keras = bn.batch_norm(x, decay=0.9, fused=False)
    _, slim_fused = bn.batch_norm(x, decay=0.9, fused=True)  # rank 2: tf-slim's fused kernel
    np.testing.assert_allclose(keras.moving_variance, reference.var[...], rtol=1e-6)
    assert not np.allclose(slim_fused.moving_variance, reference.var[...], rtol=1e-3)
    far = jnp.asarray(np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32) + 3000)
    fast = nnx.BatchNorm(3, momentum=0.0, rngs=nnx.Rngs(0))
    fast(far)  # E[x²] − E[x]² cancels where |mean| ≫ std; the two-pass variance does not
    _, two_pass = bn.batch_norm(far, decay=0.0)
    exact = np.asarray(far, np.float64).var(0)
    errors = np.abs(fast.var[...] - exact).max(), np.abs(two_pass.moving_variance - exact).max()
    assert errors[0] > 0.1 > errors[1], errors
    half = x.astype(jnp.float16)  # Flax's dtype=None promotes to its float32 statistics
    assert default(half).dtype == jnp.float32 and from_flax(default)(half).dtype == jnp.float16


@pytest.mark.parametrize("axis", [-1, 1])
def test_from_flax_equals_flax_with_the_two_pass_variance(axis):
    reference = _flax_module(momentum=0.9, epsilon=1e-3, use_fast_variance=False, axis=axis)
    module = from_flax(reference)
    assert module.data_format == ("NHWC" if axis == -1 else "NCHW")
    assert module.options["fused"] is False and module.options["decay"] == 0.9
    x = _input((6, 3, 4, 5) if axis == 1 else (6, 4, 5, 3))
    for training in (True, False):
        actual = module(x, use_running_average=not training)
        expected = reference(x, use_running_average=not training)
        error = error_in_epsilons(
            np.asarray(actual), np.asarray(expected), "float32", source=np.asarray(x),
            channel_axis=axis % 4,
        )
        assert error <= FLOAT32, f"training={training}: {error:.1f} float32 epsilons from Flax"
        for ours, theirs in (("moving_mean", "mean"), ("moving_variance", "var")):
            np.testing.assert_allclose(
                getattr(module, ours)[...], getattr(reference, theirs)[...], rtol=2e-6
            )
    np.testing.assert_allclose(module.gamma[...], reference.scale[...], rtol=0)


def test_from_flax_keeps_flax_defaults_and_to_flax_round_trips():
    reference = _flax_module(use_bias=False)  # momentum 0.99, epsilon 1e-5, the one-pass variance
    module = BatchNorm.from_flax(reference)
    assert module.options["epsilon"] == 1e-5 and module.options["decay"] == 0.99
    assert module.options["center"] is False and module.options["scale"] is True
    assert module.beta is None and module.data_format == "NHWC"
    np.testing.assert_array_equal(module.moving_variance[...], reference.var[...])
    back = to_flax(module)
    assert isinstance(back, nnx.BatchNorm) and back.use_fast_variance is False and back.bias is None
    assert (back.momentum, back.epsilon, back.axis, back.use_scale) == (0.99, 1e-5, -1, True)
    for name in ("mean", "var", "scale"):
        np.testing.assert_array_equal(getattr(back, name)[...], getattr(reference, name)[...])
    module.eval()
    assert module.to_flax().use_running_average is True
    nchw = BatchNorm(3, data_format="NCHW", axis_name="batch", decay=0.9).to_flax()
    assert nchw.axis == 1 and nchw.axis_name == "batch" and nchw.use_scale is False
    assert from_flax(nchw).axis_name == "batch"


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"axis": 0}, "axis=0: only the last axis"),
        ({"axis_name": "b", "axis_index_groups": [[0, 1]]}, "axis_index_groups is set"),
        ({"dtype": jnp.bfloat16}, "dtype=bfloat16"),
        ({"param_dtype": jnp.float16}, "param_dtype"),
        ({"promote_dtype": lambda args, dtype: args}, "promote_dtype is not Flax's default"),
    ],
)
def test_from_flax_refuses_what_has_no_counterpart(arguments, match):
    with pytest.raises(ValueError, match=match):
        from_flax(nnx.BatchNorm(3, rngs=nnx.Rngs(0), **arguments))


def test_conversions_refuse_other_modules_and_configurations():
    with pytest.raises(TypeError, match=r"module must be a flax\.nnx\.BatchNorm, got LayerNorm"):
        from_flax(nnx.LayerNorm(3, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match=r"module must be a bn_portable\.flax\.BatchNorm"):
        to_flax(nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
    refused = BatchNorm(
        3, fused=True, zero_debias_moving_mean=True, skip_nonfinite=True, dtype=jnp.float16
    )
    with pytest.raises(ValueError, match=r"fused=True.*zero_debias.*skip_nonfinite.*float16") as e:
        refused.to_flax()
    assert e.value.args[0].startswith("module cannot be converted: ")
    with pytest.raises(ValueError, match=r"renorm=True.*activation_fn"):
        BatchNorm(3, renorm=True, activation_fn=jax.nn.relu).to_flax()

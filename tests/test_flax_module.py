"""``bn_portable.flax``: the nnx module, from_state, from_flax and to_flax."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
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

DATA = Path(__file__).parent / "data" / "porting"
KERAS_LAYERS = json.loads((DATA / "manifest.json").read_text())["keras_layers"]
FLOAT32 = tolerance("float32", "y", None)


def _input(shape=(4, 5, 6, 3), seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return jnp.asarray((rng.normal(size=shape) * 2 + 0.5).astype(dtype))


def _perturbed_state(module, seed=1):
    """The module's state with every float variable moved, so that copying it is observable."""
    rng = np.random.default_rng(seed)
    state = module.state
    return state._replace(**{
        field: value + jnp.asarray(0.3 * rng.random(value.shape), value.dtype)
        for field, value in zip(state._fields, state, strict=True)
        if value is not None and jnp.issubdtype(value.dtype, jnp.floating)
    })


def _arrays(state):
    return {f: np.asarray(v) for f, v in state._asdict().items() if v is not None}


def _values(module):
    return _arrays(module.state)


def _assert_same_values(before, after):
    assert before.keys() == after.keys()
    for field in before:
        np.testing.assert_array_equal(after[field], before[field], err_msg=field)


def test_variables_have_tensorflow_names_and_kinds():
    module = BatchNorm(3, scale=True, zero_debias_moving_mean=True)
    assert set(nnx.state(module, nnx.Param)) == {"beta", "gamma"}
    assert set(nnx.state(module, nnx.BatchStat)) == {
        "moving_mean", "moving_variance", "moving_mean_biased", "local_step"
    }
    assert module.moving_stddev is None and module.skipped_steps is None
    with warnings.catch_warnings():  # .value is deprecated (not removed) in Flax 0.12
        warnings.simplefilter("ignore", DeprecationWarning)
        np.testing.assert_array_equal(module.moving_variance.value, np.ones(3, np.float32))
    assert module.local_step[...].shape == () and module.moving_mean[...].dtype == jnp.float32
    renorm = BatchNorm(3, renorm=True, center=False, param_initializers={"moving_variance": 4.0})
    assert renorm.beta is None and renorm.gamma is None and not nnx.state(renorm, nnx.Param)
    assert set(nnx.state(renorm, nnx.BatchStat)) == {
        "moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev"
    }
    np.testing.assert_array_equal(renorm.moving_stddev[...], np.full(3, 2.0, np.float32))  # sqrt(4)
    counter = BatchNorm(3, skip_nonfinite=True)
    assert isinstance(counter.skipped_steps, nnx.BatchStat)
    assert counter.skipped_steps[...].dtype == jnp.int32
    assert BatchNorm(3).data_format == "NHWC" and BatchNorm(3).use_running_average is False


CONFIGURATIONS = [
    {},
    {"scale": True, "fused": True, "decay": 0.9},
    {"zero_debias_moving_mean": True, "decay": 0.8},
    {"zero_debias_moving_mean": True, "fused": True, "scale": True},
    {"renorm": True, "scale": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5},
     "renorm_decay": 0.9},
    {"skip_nonfinite": True, "epsilon": 0.01, "activation_fn": jax.nn.relu},
]


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("options", CONFIGURATIONS, ids=lambda o: ",".join(o) or "defaults")
def test_numbers_equal_batch_norm(options, data_format):
    x = _input((4, 3, 5, 6) if data_format == "NCHW" else (4, 5, 6, 3))
    module = BatchNorm(3, data_format=data_format, **options)
    state = _perturbed_state(module)
    module.load_state(state)
    y, expected = bn.batch_norm(x, state, data_format=data_format, **options)
    np.testing.assert_array_equal(module(x), y)
    _assert_same_values(_arrays(expected), _values(module))
    assert not np.array_equal(module.moving_mean[...], state.moving_mean)  # it did move
    module.eval()
    y_eval, _ = bn.batch_norm(x, expected, data_format=data_format, is_training=False, **options)
    before = _values(module)
    np.testing.assert_array_equal(module(x), y_eval)
    _assert_same_values(before, _values(module))


def test_batch_weights_take_tensorflows_weighted_path():
    x, weights = _input((6, 4, 3)), jnp.asarray([1.0, 0.0, 2.0, 1.0, 0.5, 3.0], jnp.float32)
    module = BatchNorm(3, decay=0.9)
    y, state = bn.batch_norm(x, module.state, decay=0.9, batch_weights=weights)
    np.testing.assert_array_equal(module(x, batch_weights=weights), y)
    np.testing.assert_array_equal(module.moving_variance[...], state.moving_variance)


def test_half_precision_input_keeps_float32_variables():
    x = _input(dtype=np.float16)
    module = BatchNorm(3, decay=0.9, scale=True, fused=True)
    y, state = bn.batch_norm(x, module.state, decay=0.9, scale=True, fused=True)
    actual = module(x)
    assert actual.dtype == jnp.float16 and module.moving_mean[...].dtype == jnp.float32
    np.testing.assert_array_equal(actual, y)
    np.testing.assert_array_equal(module.moving_variance[...], state.moving_variance)


def test_train_eval_and_the_per_call_override():
    x = _input()
    module = BatchNorm(3, decay=0.5)
    start = _values(module)
    module.eval()
    assert module.use_running_average is True
    module(x)
    _assert_same_values(start, _values(module))  # inference: nothing moves
    module(x, use_running_average=False)  # a training step in eval mode
    trained = _values(module)
    assert not np.array_equal(trained["moving_mean"], start["moving_mean"])
    module.train()
    assert module.use_running_average is False
    module(x, use_running_average=True)  # an inference step in training mode
    _assert_same_values(trained, _values(module))
    module(x)
    assert not np.array_equal(module.moving_mean[...], trained["moving_mean"])

    class Net(nnx.Module):  # .train()/.eval() reach nested modules, as for nnx.BatchNorm
        def __init__(self):
            self.norm = BatchNorm(3)

    net = Net()
    net.eval()
    assert net.norm.use_running_average is True
    view = nnx.view(net, use_running_average=False)
    assert view.norm.use_running_average is False and net.norm.use_running_average is True
    undecided = BatchNorm(3, use_running_average=None)
    with pytest.raises(ValueError, match="use_running_average is None"):
        undecided(x)
    assert undecided(x, use_running_average=True).shape == x.shape


def test_under_nnx_jit_and_jax_jit():
    x = _input()
    eager, jitted = BatchNorm(3, scale=True, decay=0.9), BatchNorm(3, scale=True, decay=0.9)
    traces = []

    @nnx.jit
    def step(module, x):
        traces.append(1)
        return module(x)

    for _ in range(3):
        np.testing.assert_allclose(step(jitted, x), eager(x), rtol=1e-6, atol=1e-6)
    assert len(traces) == 1  # the module's static attributes hash and compare equal
    np.testing.assert_allclose(jitted.moving_variance[...], eager.moving_variance[...], rtol=1e-6)
    # The functional form: the graph definition is a static (hashable) jax.jit argument.
    graphdef, state = nnx.split(jitted)

    @jax.jit
    def pure(state, x):
        module = nnx.merge(graphdef, state)
        return module(x), nnx.state(module)

    y, new_state = pure(state, x)
    np.testing.assert_allclose(y, eager(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_state["moving_mean"][...], eager.moving_mean[...], rtol=1e-6)


def test_gradients_through_the_module_equal_batch_norms():
    x = _input()
    module = BatchNorm(3, scale=True)
    module.load_state(_perturbed_state(module))
    state = module.state

    def loss(module, x):
        return jnp.sum(module(x) ** 3)

    grads = nnx.grad(loss)(module, x)
    expected = jax.grad(
        lambda gamma: jnp.sum(bn.batch_norm(x, state._replace(gamma=gamma), scale=True)[0] ** 3)
    )(state.gamma)
    np.testing.assert_allclose(grads["gamma"][...], expected, rtol=1e-5)


def _whole_batch(shards, **options):
    whole = shards.reshape(-1, *shards.shape[2:])
    return bn.batch_norm(whole, **options)


def test_axis_name_gives_the_whole_batchs_statistics_under_jax_vmap():
    shards = _input((4, 3, 5, 2))  # 4 replicas, 3 samples each
    options = {"decay": 0.9, "scale": True}
    expected_y, expected = _whole_batch(shards, **options)
    graphdef, state = nnx.split(BatchNorm(2, axis_name="batch", **options))

    def step(state, x):
        module = nnx.merge(graphdef, state)
        return module(x), nnx.state(module)

    y, new = jax.vmap(step, in_axes=(None, 0), axis_name="batch")(state, shards)
    np.testing.assert_allclose(y.reshape(expected_y.shape), expected_y, rtol=1e-6, atol=1e-6)
    for replica in range(4):  # every replica holds the global statistics
        for field in ("moving_mean", "moving_variance"):
            np.testing.assert_allclose(
                new[field][...][replica], getattr(expected, field), rtol=1e-6, err_msg=field
            )
    alone = BatchNorm(2, **options)  # without axis_name each replica has its own statistics
    alone(shards[0])
    assert not np.allclose(alone.moving_mean[...], expected.moving_mean, rtol=1e-3)


def test_axis_name_under_nnx_vmap_updates_the_module():
    shards = _input((2, 4, 3, 3), seed=3)
    options = {"decay": 0.7, "zero_debias_moving_mean": True}
    expected_y, expected = _whole_batch(shards, **options)
    module = BatchNorm(3, axis_name="data", **options)
    y = nnx.jit(nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="data"))(module, shards)
    np.testing.assert_allclose(y.reshape(expected_y.shape), expected_y, rtol=1e-6, atol=1e-6)
    for field in ("moving_mean", "moving_variance", "moving_mean_biased", "local_step"):
        # The shards' sums added in another order than the whole batch's: a few ulps.
        np.testing.assert_allclose(
            getattr(module, field)[...], getattr(expected, field), rtol=1e-5, atol=1e-7,
            err_msg=field,
        )


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


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"num_features": 0}, ValueError, "num_features must be at least 1"),
        ({"num_features": True}, TypeError, "num_features must be an int"),
        ({"dtype": jnp.int32}, TypeError, "dtype must be a floating dtype"),
        ({"dtype": "nonsense"}, TypeError, "dtype must be a floating dtype"),
        ({"data_format": "NCW"}, ValueError, "data_format"),
        ({"decay": 1.5}, ValueError, "decay"),
        ({"momentum": 0.9}, TypeError, "unknown option 'momentum'"),
        ({"is_training": False}, TypeError, "is_training is not a BatchNorm option"),
        ({"batch_weights": None}, TypeError, "batch_weights is not a BatchNorm option"),
        ({"axis_name": 3}, TypeError, "axis_name must be a str"),
        ({"use_running_average": "yes"}, TypeError, "use_running_average must be True, False"),
        ({"renorm_clipping": {"rmax": 2.0}}, ValueError, "renorm_clipping is given but renorm"),
    ],
)
def test_bad_constructor_arguments(arguments, error, match):
    with pytest.raises(error, match=match):
        BatchNorm(**{"num_features": 3, **arguments})


def test_float64_variables_need_x64():
    if jax.config.jax_enable_x64:
        pytest.skip("jax_enable_x64 is set: float64 variables are created")
    with pytest.raises(ValueError, match=r"dtype is float64.*jax_enable_x64"):
        BatchNorm(3, dtype=np.float64)


def test_failed_calls_change_nothing():
    module = BatchNorm(3, renorm=True, scale=True)
    module.load_state(_perturbed_state(module))
    before = _values(module)
    with pytest.raises(TypeError, match=r"x must be a jax\.Array, got ndarray"):
        module(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"x has 4 channels on axis 1 .* num_features=3"):
        module(_input((2, 4)))
    with pytest.raises(ValueError, match="x must have rank"):
        module(_input((3,)))
    with pytest.raises(ValueError, match="batch_weights cannot be given to a module with renorm"):
        module(_input((2, 3)), batch_weights=jnp.ones(2))
    with pytest.raises(TypeError, match="use_running_average must be True, False or None"):
        module(_input((2, 3)), use_running_average=1)
    with pytest.raises(ValueError, match=r"state.gamma must have shape \(3,\)"):
        module.load_state(module.state._replace(moving_mean=jnp.zeros(3), gamma=jnp.ones(4)))
    with pytest.raises(ValueError, match="state has the fields"):
        module.load_state(bn.BatchNormState(moving_mean=jnp.zeros(3), moving_variance=jnp.ones(3)))
    with pytest.raises(TypeError, match="state must be a BatchNormState"):
        module.load_state(None)
    _assert_same_values(before, _values(module))


def test_state_and_options_views():
    module = BatchNorm(3, decay=0.9, renorm=True, renorm_clipping={"rmax": 3.0})
    assert module.options["renorm_clipping"] == {"rmax": 3.0} and module.options["decay"] == 0.9
    assert "cross_replica_sum" not in module.options and "is_training" not in module.options
    with pytest.raises(TypeError):
        module.options["decay"] = 0.5  # type: ignore[index]
    copy = BatchNorm.from_state(module.state, data_format=module.data_format, **module.options)
    _assert_same_values(_values(module), _values(copy))
    assert nnx.graphdef(copy) == nnx.graphdef(module)  # equal options: one jit trace serves both


def test_importing_bn_portable_imports_neither_flax_nor_jax():
    package = bn.__name__  # whatever the package is called here (a vendored copy too)
    code = (
        f"import sys, {package}, {package}.porting; "
        "print(sorted(m for m in ('flax', 'jax') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert result.stdout.strip() == "[]"

"""``bn_portable.flax``: the nnx module (its numbers, modes, transforms and validation)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

flax = pytest.importorskip("flax", reason="bn_portable.flax needs Flax, which is not installed")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import bn_portable as bn  # noqa: E402
from bn_portable.flax import BatchNorm  # noqa: E402
from flax_cases import _input  # noqa: E402


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

"""batch_norm on every backend: semantics that hold whatever TensorFlow's rounding.

Exact numbers against TensorFlow are the conformance suite's job; these tests
pin the structure (state fields and dtypes, which statistics move, laziness,
tracing) so that a regression names itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from conformance.backends import Backend

import bn_portable as bn

RNG = np.random.default_rng(20261127)
X4 = RNG.normal(3.0, 2.0, size=(6, 5, 4, 3)).astype(np.float32)


def run_layer(backend: Backend, x: np.ndarray, dtype: str = "float32", steps: int = 1, **options):
    """``steps`` training calls then return (y, state) as NumPy, state fields by name."""
    xb = backend.asarray(x, dtype)

    def step(x_, state_):
        return bn.batch_norm(x_, state_, **options)

    y, state = backend.call(lambda x_: bn.batch_norm(x_, None, **options), xb)
    for _ in range(steps - 1):
        y, state = backend.call(step, xb, state)
    return backend.to_numpy(y), {
        name: backend.to_numpy(value) for name, value in state._asdict().items() if value is not None
    }, state


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        ({}, {"beta", "moving_mean", "moving_variance"}),
        ({"scale": True, "center": False}, {"gamma", "moving_mean", "moving_variance"}),
        (
            {"zero_debias_moving_mean": True},
            {"beta", "moving_mean", "moving_variance", "moving_mean_biased", "local_step"},
        ),
        (
            {"renorm": True, "renorm_clipping": {"rmax": 2.0}},
            {"beta", "moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev"},
        ),
    ],
)
def test_state_has_the_configurations_fields(backend, options, fields):
    _, state, _ = run_layer(backend, X4, **options)
    assert set(state) == fields


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_training_normalizes_the_batch(backend, fused, data_format):
    y, _, _ = run_layer(backend, X4, fused=fused, data_format=data_format)
    axes = (0, 2, 3) if data_format == "NCHW" else (0, 1, 2)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-5)
    # Biased variance in the normalization: var(y) = var / (var + epsilon).
    expected = X4.var(axis=axes) / (X4.var(axis=axes) + 0.001)
    np.testing.assert_allclose(y.var(axis=axes), expected, rtol=1e-4)


def test_moving_variance_is_bessel_corrected_only_on_the_fused_kernel(backend):
    n = X4.shape[0] * X4.shape[1] * X4.shape[2]
    biased = X4.astype(np.float64).var(axis=(0, 1, 2))
    _, fused_state, _ = run_layer(backend, X4, fused=True, decay=0.0)
    _, plain_state, _ = run_layer(backend, X4, fused=False, decay=0.0)
    np.testing.assert_allclose(fused_state["moving_variance"], biased * n / (n - 1), rtol=1e-5)
    np.testing.assert_allclose(plain_state["moving_variance"], biased, rtol=1e-5)


def test_zero_debias_counts_steps_and_removes_the_bias(backend):
    _, state, _ = run_layer(backend, X4, zero_debias_moving_mean=True, decay=0.9, steps=3)
    assert float(state["local_step"]) == 3.0
    # Every batch is the same, so the debiased mean is exactly the batch mean.
    np.testing.assert_allclose(state["moving_mean"], X4.mean(axis=(0, 1, 2)), rtol=1e-5)


def test_inference_returns_the_state_unchanged(backend):
    _, _, state = run_layer(backend, X4, scale=True)
    xb = backend.asarray(X4, "float32")
    y, new_state = backend.call(lambda x_, s_: bn.batch_norm(x_, s_, scale=True, is_training=False), xb, state)
    for name, value in state._asdict().items():
        if value is not None:
            np.testing.assert_array_equal(backend.to_numpy(getattr(new_state, name)), backend.to_numpy(value))
    moving_mean = backend.to_numpy(state.moving_mean)
    moving_variance = backend.to_numpy(state.moving_variance)
    expected = (X4 - moving_mean) / np.sqrt(moving_variance + 0.001)
    np.testing.assert_allclose(backend.to_numpy(y), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("options", "state_dtype"),
    [
        ({"fused": True}, "float32"),  # Keras fused kernel
        ({"fused": False}, "float32"),  # Keras layer: float32 variables for half inputs
        ({"batch_weights": True}, "float16"),  # tf-slim legacy: input-dtype variables
    ],
)
def test_half_precision_state_dtype_follows_tensorflow(backend, options, state_dtype):
    if "float16" not in backend.dtypes:
        pytest.skip(f"{backend.name} has no float16")
    options = dict(options)
    if options.pop("batch_weights", False):
        options["batch_weights"] = backend.asarray(np.ones(X4.shape[0]), "float16")
    y, state, _ = run_layer(backend, X4, "float16", **options)
    assert y.dtype == np.float16
    assert state["moving_mean"].dtype == np.dtype(state_dtype)


def test_results_stay_in_the_input_namespace(backend):
    from array_api_compat import array_namespace

    xb = backend.asarray(X4, "float32")
    y, state = backend.call(lambda x_: bn.batch_norm(x_, scale=True), xb)
    assert array_namespace(y) is array_namespace(xb)
    assert array_namespace(state.moving_variance) is array_namespace(xb)


def test_activation_fn_is_applied_to_the_output(backend):
    xb = backend.asarray(X4, "float32")
    xp = backend.xp
    y, _ = backend.call(lambda x_: bn.batch_norm(x_, activation_fn=lambda v: xp.maximum(v, 0.0 * v)), xb)
    plain, _ = backend.call(lambda x_: bn.batch_norm(x_), xb)
    np.testing.assert_array_equal(backend.to_numpy(y), np.maximum(backend.to_numpy(plain), 0))


def test_param_initializers_accept_arrays_numbers_and_callables(backend):
    xb = backend.asarray(X4, "float32")
    gamma = backend.asarray(np.array([1.0, 2.0, 3.0]), "float32")

    def moving_variance(shape, dtype):
        return [4.0] * shape[0]

    initializers = {"gamma": gamma, "beta": 0.5, "moving_variance": moving_variance}
    _, state = bn.batch_norm(xb, scale=True, is_training=False, param_initializers=initializers)
    np.testing.assert_array_equal(backend.to_numpy(state.gamma), [1, 2, 3])
    np.testing.assert_array_equal(backend.to_numpy(state.beta), [0.5] * 3)
    np.testing.assert_array_equal(backend.to_numpy(state.moving_variance), [4.0] * 3)


def test_renorm_stddev_starts_at_the_root_of_the_moving_variance(backend):
    xb = backend.asarray(X4, "float32")
    _, state = bn.batch_norm(
        xb, renorm=True, is_training=False, param_initializers={"moving_variance": 9.0}
    )
    np.testing.assert_array_equal(backend.to_numpy(state.moving_stddev), [3.0] * 3)
    np.testing.assert_array_equal(backend.to_numpy(state.renorm_stddev), [3.0] * 3)


def test_with_moving_statistics_replaces_only_the_moving_statistics():
    from bn_portable._tf._fields import FIELDS
    from bn_portable._tf._state import with_moving_statistics

    state = bn.BatchNormState(*(np.full(1, index, dtype=np.float32) for index, _ in enumerate(FIELDS)))
    mean, variance = np.zeros(1, np.float32), np.ones(1, np.float32)
    new = with_moving_statistics(state, mean, variance)
    expected = state._replace(moving_mean=mean, moving_variance=variance)
    assert type(new) is bn.BatchNormState
    assert all(a is b for a, b in zip(new, expected, strict=True))


@pytest.mark.parametrize(
    ("dtype", "options"),
    [
        ("float32", {"fused": True}),  # the Keras layer's fused path: 1 − decay rounded in float32
        ("float32", {"fused": True, "zero_debias_moving_mean": True}),  # tf-slim's fused path
        ("float64", {}),  # the Keras layer
        ("float16", {"zero_debias_moving_mean": True}),  # legacy: float16 variables, a 0-d array
    ],
)
def test_plan_decay_weight_is_the_steps_average_weight(dtype, options):
    from bn_portable._kernels._moving_averages import average_weight
    from bn_portable._tf._options import layer_options
    from bn_portable._tf._plan import prepare, weight_rounding

    x = np.ones((2, 3, 3, 4), dtype=dtype)
    decay = 0.9997  # 1 − decay rounds differently in float32 and in double precision
    xp, plan, state = prepare(x, None, None, layer_options(weighted=False, decay=decay, **options))
    expected = average_weight(state.moving_mean, decay, weight_rounding(plan.path), xp=xp)
    if dtype == "float16":
        assert plan.decay_weight is None and not isinstance(expected, float)
    else:
        assert type(plan.decay_weight) is float and plan.decay_weight == expected


def test_a_plan_made_while_torch_compiles_leaves_the_weight_to_the_step(monkeypatch):
    torch = pytest.importorskip("torch")
    from bn_portable._tf._options import layer_options
    from bn_portable._tf._plan import prepare

    options = layer_options(weighted=False, fused=True)
    x = torch.ones((2, 3, 3, 4))
    assert type(prepare(x, None, None, options)[1].decay_weight) is float
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert prepare(x, None, None, options)[1].decay_weight is None

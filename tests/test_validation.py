"""Bad input raises ValueError or TypeError naming the argument; nothing is mutated."""

from __future__ import annotations

import numpy as np
import pytest

import bn_portable as bn

X = np.random.default_rng(7).normal(size=(4, 3, 2, 5)).astype(np.float32)
C = X.shape[-1]
ONES = np.ones(C, np.float32)
ZEROS = np.zeros(C, np.float32)


def _state(**options):
    return bn.batch_norm(X, **options)[1]


LAYER_ERRORS = [
    ({"data_format": "NCDHW"}, ValueError, "data_format"),
    ({"decay": 1.5}, ValueError, "decay"),
    ({"decay": "0.9"}, TypeError, "decay"),
    ({"renorm_decay": -0.1}, ValueError, "renorm_decay"),
    ({"epsilon": -1e-3}, ValueError, "epsilon"),
    ({"epsilon": float("inf")}, ValueError, "epsilon"),
    ({"is_training": 1}, TypeError, "is_training"),
    ({"is_training": np.bool_(True)}, TypeError, "is_training"),
    ({"center": None}, TypeError, "center"),
    ({"fused": "yes"}, TypeError, "fused"),
    ({"activation_fn": "relu"}, TypeError, "activation_fn"),
    ({"param_initializers": {"moving_stddev": 1.0}}, ValueError, "param_initializers"),
    ({"param_initializers": [1.0]}, TypeError, "param_initializers"),
    ({"param_initializers": {"beta": np.ones(C + 1)}}, ValueError, "param_initializers['beta']"),
    ({"param_initializers": {"beta": "zero"}}, TypeError, "param_initializers['beta']"),
    ({"renorm_clipping": {"rmax": 2.0}}, ValueError, "renorm_clipping"),
    ({"renorm": True, "renorm_clipping": {"r_max": 2.0}}, ValueError, "renorm_clipping"),
    ({"renorm": True, "renorm_clipping": {"rmin": 2.0, "rmax": 1.0}}, ValueError, "rmin <= rmax"),
    ({"renorm": True, "renorm_clipping": {"dmax": -1.0}}, ValueError, "dmax"),
    ({"renorm": True, "zero_debias_moving_mean": True}, ValueError, "renorm"),
    ({"renorm": True, "batch_weights": np.ones(4, np.float32)}, ValueError, "renorm"),
    ({"batch_weights": np.ones(3, np.float32)}, ValueError, "batch_weights"),
    ({"batch_weights": [1.0] * 4}, TypeError, "batch_weights"),
    ({"batch_weights": np.array(["a"] * 4)}, TypeError, "batch_weights"),
]


@pytest.mark.parametrize(("options", "error", "names"), LAYER_ERRORS, ids=lambda v: str(v)[:40])
def test_batch_norm_rejects_bad_options(options, error, names):
    with pytest.raises(error, match=_pattern(names)):
        bn.batch_norm(X, **options)


@pytest.mark.parametrize(
    ("x", "error", "names"),
    [
        (X[0, 0, 0], ValueError, "x"),  # rank 1
        (X[None], ValueError, "x"),  # rank 5 is fine; rank 6 is not
        (X.astype(np.int32), TypeError, "x"),
        (X.tolist(), TypeError, "x"),
    ],
    ids=["rank1", "rank5ok", "int", "list"],
)
def test_batch_norm_rejects_bad_inputs(x, error, names):
    x = x if not isinstance(x, np.ndarray) or x.ndim != 5 else x[None]
    with pytest.raises(error, match=_pattern(names)):
        bn.batch_norm(x)


def test_fused_kernel_paths_reject_float64_like_tensorflow():
    with pytest.raises(TypeError, match="fused=True"):
        bn.batch_norm(X.astype(np.float64), fused=True, zero_debias_moving_mean=True)
    # Where TensorFlow silently falls back to the composite, so do we.
    y, state = bn.batch_norm(X.astype(np.float64), fused=True)
    assert y.dtype == np.float64 and state.moving_mean.dtype == np.float64


@pytest.mark.parametrize(
    ("state", "options", "error", "names"),
    [
        ("renorm", {}, ValueError, "another configuration"),
        ("plain", {"scale": True}, ValueError, "another configuration"),
        ("plain", {"zero_debias_moving_mean": True}, ValueError, "another configuration"),
        ("float64", {}, TypeError, "state.beta"),
        ("channels", {}, ValueError, "state.beta"),
        ("tuple", {}, TypeError, "state"),
        ("torch", {}, TypeError, "state.beta"),
    ],
)
def test_batch_norm_rejects_a_state_of_another_configuration(state, options, error, names):
    given = {
        "renorm": lambda: _state(renorm=True),
        "plain": lambda: _state(),
        "float64": lambda: bn.batch_norm(X.astype(np.float64))[1],
        "channels": lambda: bn.batch_norm(X[..., :2])[1],
        "tuple": lambda: tuple(_state()),
        "torch": lambda: _torch_state(),
    }[state]()
    with pytest.raises(error, match=_pattern(names)):
        bn.batch_norm(X, given, **options)


def _torch_state():
    torch = pytest.importorskip("torch")
    return bn.batch_norm(torch.from_numpy(X))[1]


def test_mixed_libraries_are_a_type_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="batch_weights"):
        bn.batch_norm(X, batch_weights=torch.ones(4))
    with pytest.raises(TypeError, match="scale"):
        bn.fused_batch_norm(X, torch.ones(C), ZEROS)


FUSED_ERRORS = [
    ({"x": X[0]}, ValueError, "x"),
    ({"x": X.astype(np.float64)}, TypeError, "x"),
    ({"data_format": "NCW"}, ValueError, "data_format"),
    ({"scale": ONES.astype(np.float16)}, TypeError, "scale"),
    ({"offset": np.zeros(C + 1, np.float32)}, ValueError, "offset"),
    ({"is_training": False}, ValueError, "mean and variance"),
    ({"exponential_avg_factor": 0.5}, ValueError, "mean and variance"),
    ({"exponential_avg_factor": 1.5}, ValueError, "exponential_avg_factor"),
    ({"epsilon": -1.0}, ValueError, "epsilon"),
    ({"mean": ZEROS, "variance": ONES[:2]}, ValueError, "variance"),
    ({"is_training": "no"}, TypeError, "is_training"),
]


@pytest.mark.parametrize(("arguments", "error", "names"), FUSED_ERRORS, ids=lambda v: str(v)[:30])
def test_fused_batch_norm_rejects_bad_arguments(arguments, error, names):
    call = {"x": X, "scale": ONES, "offset": ZEROS, **arguments}
    with pytest.raises(error, match=_pattern(names)):
        bn.fused_batch_norm(**call)


@pytest.mark.parametrize(
    ("call", "error", "names"),
    [
        (lambda: bn.moments(X, [0, 4]), ValueError, "axes"),
        (lambda: bn.moments(X, [0, 0]), ValueError, "axes"),
        (lambda: bn.moments(X, "0"), TypeError, "axes"),
        (lambda: bn.moments(X.astype(np.int64), [0]), TypeError, "x"),
        (lambda: bn.moments(X, [0], keepdims=1), TypeError, "keepdims"),
        (lambda: bn.weighted_moments(X, [0], np.ones((2, 3))), ValueError, "frequency_weights"),
        (lambda: bn.weighted_moments(X, [0], np.ones((1, 1, 1, 1, 1))), ValueError, "frequency_weights"),
        (lambda: bn.weighted_moments(X, [0], np.array(["w"])), TypeError, "frequency_weights"),
        (lambda: bn.batch_normalization(X, ZEROS, ONES, None, None, -1.0), ValueError, "variance_epsilon"),
        (lambda: bn.batch_normalization(X, ZEROS, ONES.astype(np.float64), None, None, 0.1), TypeError, "variance"),
        (lambda: bn.batch_normalization(X, ZEROS, None, None, None, 0.1), TypeError, "variance"),
        (lambda: bn.batch_normalization(X, ZEROS, np.ones(C + 2, np.float32), None, None, 0.1), ValueError, "variance"),
    ],
)
def test_primitives_reject_bad_arguments(call, error, names):
    with pytest.raises(error, match=_pattern(names)):
        call()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"fused": True},
        {"scale": True, "zero_debias_moving_mean": True},
        {"renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}},
        {"batch_weights": "weights"},
        {"is_training": False, "scale": True},
    ],
)
def test_nothing_is_mutated(options):
    """Read-only inputs: any in-place write would raise; values are compared too."""
    options = dict(options)
    x = X.copy()
    if options.get("batch_weights") == "weights":
        options["batch_weights"] = np.linspace(0.5, 2.0, X.shape[0]).astype(np.float32)
    state_options = {k: v for k, v in options.items() if k != "is_training"}
    _, state = bn.batch_norm(x, **state_options)
    frozen = [x, *(v for v in state if v is not None)]
    if "batch_weights" in options:
        frozen.append(options["batch_weights"])
    copies = [a.copy() for a in frozen]
    for array in frozen:
        array.flags.writeable = False
    bn.batch_norm(x, state, **options)
    for array, copy in zip(frozen, copies):
        np.testing.assert_array_equal(array, copy)


def test_a_failed_call_leaves_the_state_alone():
    _, state = bn.batch_norm(X)
    arrays = [a for a in state if a is not None]
    before = [a.copy() for a in arrays]
    with pytest.raises(ValueError, match="another configuration"):
        bn.batch_norm(X, state, scale=True)
    for array, copy in zip(arrays, before):
        np.testing.assert_array_equal(array, copy)


def _pattern(text: str) -> str:
    import re

    return re.escape(text)


def test_numpy_scalars_are_accepted_as_options():
    y, _ = bn.batch_norm(X, decay=np.float32(0.9), epsilon=np.float64(1e-3))
    mean, _ = bn.moments(X, np.array([0, 1, 2]))
    assert y.shape == X.shape and mean.shape == (C,)


def test_batch_normalization_accepts_numbers_like_tensorflow():
    y = bn.batch_normalization(X, 0.5, 4.0, None, ONES, 0.0)
    np.testing.assert_allclose(y, (X - 0.5) / 2.0, rtol=1e-6)


def test_initial_state_never_aliases_the_callers_arrays():
    gamma = np.full(C, 2.0, np.float32)
    _, state = bn.batch_norm(X, scale=True, renorm=True, param_initializers={"gamma": gamma, "beta": 0.5})
    assert not np.shares_memory(state.gamma, gamma)
    assert not np.shares_memory(state.renorm_mean, state.moving_mean)
    assert state.beta.flags.writeable and state.beta.strides == (4,)


def test_param_initializers_with_a_state_is_an_error():
    _, state = bn.batch_norm(X)
    with pytest.raises(ValueError, match="param_initializers"):
        bn.batch_norm(X, state, param_initializers={"beta": 1.0})


def test_param_initializers_of_another_library_is_a_type_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="param_initializers\\['gamma'\\]"):
        bn.batch_norm(X, scale=True, param_initializers={"gamma": torch.ones(C)})


def test_arrays_on_another_device_are_named():
    xs = pytest.importorskip("array_api_strict")
    x = xs.asarray(X)
    weights = xs.asarray(np.ones(4, np.float32), device=xs.Device("device1"))
    with pytest.raises(ValueError, match="batch_weights is on device"):
        bn.batch_norm(x, batch_weights=weights)
    _, state = bn.batch_norm(xs.asarray(X, device=xs.Device("device1")))
    with pytest.raises(ValueError, match=r"state\.beta is on device"):
        bn.batch_norm(x, state)


def test_unknown_dask_chunk_sizes_are_an_error_not_nan():
    da = pytest.importorskip("dask.array")
    x = da.from_array(X, chunks=2)
    x = x[x[:, 0, 0, 0] > -10]  # a boolean mask leaves the batch size unknown
    with pytest.raises(ValueError, match="unknown length along axis 0"):
        bn.fused_batch_norm(x, da.from_array(ONES), da.from_array(ZEROS))
    with pytest.raises(ValueError, match="unknown length along axis 0"):
        bn.batch_norm(x, fused=True)


@pytest.mark.parametrize("epsilon", [float("inf"), float("nan")])
def test_every_epsilon_must_be_finite(epsilon):
    with pytest.raises(ValueError, match="variance_epsilon"):
        bn.batch_normalization(X, ZEROS, ONES, None, None, epsilon)
    with pytest.raises(ValueError, match="epsilon"):
        bn.fused_batch_norm(X, ONES, ZEROS, epsilon=epsilon)
    with pytest.raises(ValueError, match="epsilon"):
        bn.fused_batch_norm_grad(X, X, ONES, ZEROS, ONES, epsilon=epsilon)


def test_moments_shift_must_be_an_array_that_broadcasts():
    with pytest.raises(TypeError, match="shift"):
        bn.moments(X, [0], shift="junk")
    with pytest.raises(ValueError, match="shift"):
        bn.moments(X, [0], shift=np.ones(C + 1, np.float32))


def test_moments_with_axes_none_reduce_every_axis_as_tensorflow_does():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    mean, variance = bn.moments(x, None)
    np.testing.assert_allclose(mean, x.mean(), rtol=1e-6)
    np.testing.assert_allclose(variance, x.var(), rtol=1e-6)
    mean, _ = bn.weighted_moments(x, None, np.ones_like(x))
    np.testing.assert_allclose(mean, x.mean(), rtol=1e-6)
    assert bn.partial_moments(x, None).count == 12


def test_a_bool_is_no_axis_inside_a_sequence_either():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="axes must be an int or a sequence of ints"):
        bn.moments(x, [True])
    with pytest.raises(TypeError, match="axes must be an int or a sequence of ints"):
        bn.moments(x, (0, np.bool_(True)))


def test_a_complex_initial_value_is_refused():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match=r"param_initializers\['moving_mean'\] must have a real"):
        bn.batch_norm(x, param_initializers={"moving_mean": np.ones(4, np.complex64)})


def test_longdouble_has_no_tensorflow_dtype():
    x = np.ones((3, 4), np.longdouble)
    if x.dtype == np.float64:
        pytest.skip("longdouble is float64 on this platform")
    with pytest.raises(TypeError, match=r"x must have a real floating dtype TensorFlow has \(float16, bfloat16, float32, float64\), got float128"):
        bn.batch_norm(x)
    with pytest.raises(TypeError, match="x must have a real floating dtype TensorFlow has"):
        bn.moments(x, [0])


def test_a_misshaped_local_step_is_told_it_holds_one_value():
    x = np.ones((3, 4), np.float32)
    _, state = bn.batch_norm(x, zero_debias_moving_mean=True)
    with pytest.raises(ValueError, match=r"state\.local_step must have shape \(\) \(one value for the layer\)"):
        bn.batch_norm(x, state._replace(local_step=np.zeros(4, np.float32)), zero_debias_moving_mean=True)

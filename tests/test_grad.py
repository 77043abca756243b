"""``batch_norm_vjp`` against autodiff through the forward: the mathematics and the dtype contract.

``batch_norm_vjp`` is checked on every backend against PyTorch autograd
(float64 where the path allows it) through ``batch_norm`` and, on JAX, against
``jax.grad``. Exact numbers against TensorFlow are the conformance suite's job
(its goldens hold ``tf.gradients`` through tf-slim). ``fused_batch_norm_grad``
is checked in ``test_grad_fused.py``; validation, purity, laziness and tracing
in ``test_grad_validation.py``.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from conformance.backends import Backend

import bn_portable as bn
from grad_cases import TOLERANCE, assert_close

# (id, shape, dtype, options, weights): weights None, "random" or "zero".
CONFIGS = [
    ("train/r4/NHWC/scale", (6, 3, 4, 5), "float64", {"scale": True}, None),
    ("train/r2/NHWC/center-only", (16, 4), "float64", {}, None),
    ("train/r3/NCHW/scale", (6, 4, 5), "float64", {"scale": True, "data_format": "NCHW"}, None),
    ("train/r5/NCHW/scale", (3, 4, 2, 3, 2), "float64", {"scale": True, "data_format": "NCHW"}, None),
    ("inference/r4/NHWC/scale", (6, 3, 4, 5), "float64", {"scale": True, "is_training": False}, None),
    ("train/no-center-no-scale", (6, 3, 4, 5), "float64", {"center": False}, None),
    ("train/scale-no-center", (6, 3, 4, 5), "float64", {"center": False, "scale": True}, None),
    ("train/zero-debias", (6, 3, 4, 5), "float64", {"scale": True, "zero_debias_moving_mean": True}, None),
    ("weighted/r4/NHWC", (6, 3, 4, 5), "float64", {"scale": True}, "random"),
    ("weighted/r3/NCHW", (6, 4, 5), "float64", {"scale": True, "data_format": "NCHW"}, "random"),
    ("weighted/zero-total", (5, 3), "float64", {"scale": True}, "zero"),
    ("weighted/inference", (6, 3, 4, 5), "float64", {"scale": True, "is_training": False}, "random"),
    # renorm is float32 at most: TensorFlow rejects it on float64, and so does bn_portable.
    (
        "renorm/clip-active",
        (8, 2, 3, 4),
        "float32",
        # The batch std is about 3 and its mean about 2 against renorm_stddev 1 and
        # renorm_mean 0: r and d both sit on their clipping bounds.
        {"scale": True, "renorm": True, "renorm_clipping": {"rmin": 0.8, "rmax": 1.2, "dmax": 0.3}},
        None,
    ),
    (
        "renorm/r5/NCHW/no-scale",
        (3, 4, 2, 3, 2),
        "float32",
        {"renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}, "data_format": "NCHW"},
        None,
    ),
    ("renorm/inference", (8, 2, 3, 4), "float32", {"scale": True, "renorm": True, "is_training": False}, None),
    # The fused kernel takes float32 at most.
    ("fused/train/r4/NHWC", (6, 3, 4, 5), "float32", {"scale": True, "fused": True}, None),
    (
        "fused/inference/r4/NCHW",
        (6, 5, 3, 4),
        "float32",
        {"scale": True, "fused": True, "is_training": False, "data_format": "NCHW"},
        None,
    ),
    ("fused/train/r5/NCHW", (3, 4, 2, 3, 2), "float32", {"scale": True, "fused": True, "data_format": "NCHW"}, None),
    (
        "fused/train/r2/zero-debias",
        (16, 4),
        "float32",
        {"scale": True, "fused": True, "zero_debias_moving_mean": True},
        None,
    ),
]


def _config_inputs(shape, dtype, options, weights):
    channels = shape[1] if options.get("data_format") == "NCHW" else shape[-1]
    rng = np.random.default_rng(zlib.crc32(repr((shape, dtype, sorted(options))).encode()))
    x = rng.normal(2.0, 3.0, size=shape)
    dy = rng.normal(0.2, 1.0, size=shape)
    initializers = {
        "gamma": (rng.normal(1.0, 0.3, size=channels)).tolist(),
        "beta": (rng.normal(0.0, 0.5, size=channels)).tolist(),
        "moving_mean": (rng.normal(1.5, 1.0, size=channels)).tolist(),
        "moving_variance": (rng.uniform(1.0, 5.0, size=channels)).tolist(),
    }
    batch_weights = None
    if weights == "random":
        batch_weights = rng.uniform(0.1, 1.0, size=shape[0])
    elif weights == "zero":
        batch_weights = np.zeros(shape[0])
    return x, dy, initializers, batch_weights


def _initial_state(x, options, initializers, batch_weights=None):
    """The variables as created on the first call (inference leaves them untouched)."""
    options = {**options, "is_training": False}
    return bn.batch_norm(x, param_initializers=initializers, batch_weights=batch_weights, **options)[1]


def _torch_autodiff(x, dy, state, batch_weights, options, dtype):
    """``(y, dx, dgamma, dbeta)`` by torch.autograd through ``batch_norm`` (NumPy in and out)."""
    torch = pytest.importorskip("torch")
    as_tensor = lambda a: None if a is None else torch.tensor(np.asarray(a), dtype=getattr(torch, dtype))  # noqa: E731
    x_t = as_tensor(x).requires_grad_(True)
    leaves = {
        name: as_tensor(value).requires_grad_(True)
        for name, value in state._asdict().items()
        if name in ("gamma", "beta") and value is not None
    }
    state_t = bn.BatchNormState(
        **{name: leaves.get(name, as_tensor(value)) for name, value in state._asdict().items()}
    )
    y, _ = bn.batch_norm(x_t, state_t, batch_weights=as_tensor(batch_weights), **options)
    grads = torch.autograd.grad(y, [x_t, *leaves.values()], as_tensor(dy))
    by_name = dict(zip(["dx", *[f"d{name}" for name in leaves]], grads))
    return [y.detach().numpy()] + [
        None if by_name.get(name) is None else by_name[name].numpy() for name in ("dx", "dgamma", "dbeta")
    ]


def _on_backend(backend, array, dtype):
    return None if array is None else backend.asarray(np.asarray(array), dtype)


def _run_vjp(backend, x, dy, state, batch_weights, options):
    """``batch_norm_vjp`` then ``vjp(dy)`` in one backend call (jitted on jax-jit, lazy on Dask)."""

    def call(x_, state_, weights_, dy_):
        y, new_state, vjp = bn.batch_norm_vjp(x_, state_, batch_weights=weights_, **options)
        return (y, new_state, *vjp(dy_))

    return backend.call(call, x, state, batch_weights, dy)


@pytest.mark.parametrize(("shape", "dtype", "options", "weights"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_vjp_matches_autodiff_through_the_forward(backend: Backend, shape, dtype, options, weights):
    x_np, dy_np, initializers, weights_np = _config_inputs(shape, dtype, options, weights)
    x = backend.asarray(x_np, dtype)
    state = _initial_state(x, options, initializers)
    dy = backend.asarray(dy_np, dtype)
    batch_weights = _on_backend(backend, weights_np, dtype)
    y, new_state, dx, dgamma, dbeta = _run_vjp(backend, x, dy, state, batch_weights, options)

    state_np = bn.BatchNormState(**{k: backend.to_numpy(v) for k, v in state._asdict().items()})
    reference = _torch_autodiff(
        backend.to_numpy(x), backend.to_numpy(dy), state_np,
        None if batch_weights is None else backend.to_numpy(batch_weights), options, dtype,
    )
    rtol = TOLERANCE[dtype]
    assert_close(backend.to_numpy(y), reference[0], rtol, "y")
    for name, ours, theirs in zip(("dx", "dgamma", "dbeta"), (dx, dgamma, dbeta), reference[1:]):
        assert (ours is None) == (theirs is None), name
        if ours is not None:
            assert_close(backend.to_numpy(ours), theirs, rtol, name)
    assert (dgamma is None) == (not options.get("scale", False))
    assert (dbeta is None) == (not options.get("center", True))
    assert dx.dtype == x.dtype
    for grad in (dgamma, dbeta):
        if grad is not None:
            assert grad.dtype == state.moving_mean.dtype
    assert type(dx) is type(x)  # same library, not converted
    del new_state


@pytest.mark.parametrize(("shape", "dtype", "options", "weights"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_vjp_matches_jax_grad(shape, dtype, options, weights):
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    from conformance.backends import enable_jax_float64

    enable_jax_float64()
    x_np, dy_np, initializers, weights_np = _config_inputs(shape, dtype, options, weights)
    x = jnp.asarray(x_np, dtype=dtype)
    dy = jnp.asarray(dy_np, dtype=dtype)
    batch_weights = None if weights_np is None else jnp.asarray(weights_np, dtype=dtype)
    state = _initial_state(x, options, initializers)

    def loss(x_, gamma, beta):
        y, _ = bn.batch_norm(x_, state._replace(gamma=gamma, beta=beta), batch_weights=batch_weights, **options)
        return jnp.sum(y * dy)

    wrt = [i for i, p in enumerate((x, state.gamma, state.beta)) if p is not None]
    expected = jax.grad(loss, argnums=tuple(wrt))(x, state.gamma, state.beta)
    _, _, vjp = bn.batch_norm_vjp(x, state, batch_weights=batch_weights, **options)
    actual = [g for g in vjp(dy) if g is not None]
    assert len(actual) == len(expected)
    for ours, theirs in zip(actual, expected):
        assert_close(np.asarray(ours), np.asarray(theirs), TOLERANCE[dtype])


def test_renorm_clipping_is_active_in_the_renorm_case():
    """Guards the config above: the batch statistics lie outside the clipping box."""
    _, shape, dtype, options, weights = next(c for c in CONFIGS if c[0] == "renorm/clip-active")
    x, *_ = _config_inputs(shape, dtype, options, weights)
    std = x.reshape(-1, shape[-1]).std(axis=0)
    mean = x.reshape(-1, shape[-1]).mean(axis=0)
    assert (std > options["renorm_clipping"]["rmax"]).all()
    assert (np.abs(mean) > options["renorm_clipping"]["dmax"]).all()


@pytest.mark.parametrize(
    ("options", "weights"),
    [({"scale": True, "fused": True}, None), ({"scale": True}, "random"), ({"scale": True, "renorm": True}, None)],
)
def test_y_and_state_are_exactly_batch_norms(backend: Backend, options, weights):
    x_np, dy_np, initializers, weights_np = _config_inputs((6, 3, 4, 5), "float32", options, weights)
    x = backend.asarray(x_np, "float32")
    state = _initial_state(x, options, initializers)
    batch_weights = _on_backend(backend, weights_np, "float32")
    y, new_state, *_ = _run_vjp(backend, x, backend.asarray(dy_np, "float32"), state, batch_weights, options)
    y_ref, state_ref = backend.call(
        lambda x_, s_, w_: bn.batch_norm(x_, s_, batch_weights=w_, **options), x, state, batch_weights
    )
    np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(y_ref))
    for field in bn.BatchNormState._fields:
        ours, theirs = getattr(new_state, field), getattr(state_ref, field)
        assert (ours is None) == (theirs is None), field
        if ours is not None:
            np.testing.assert_array_equal(backend.to_numpy(ours), backend.to_numpy(theirs), field)


# --------------------------------------------------------------------------
# half precision through the layer


@pytest.mark.parametrize(
    ("options", "weights", "state_dtype"),
    [
        ({"scale": True}, None, "float32"),  # Keras layer: float32 variables
        ({"scale": True, "fused": True}, None, "float32"),  # fused kernel
        ({"scale": True}, "random", "float16"),  # tf-slim's composite: variables in x's dtype
    ],
    ids=["keras_layer", "fused", "legacy"],
)
def test_float16_layer_gradients_accumulate_in_float32(backend: Backend, options, weights, state_dtype):
    if "float16" not in backend.dtypes:
        pytest.skip(f"{backend.name} has no float16")
    x_np, dy_np, initializers, weights_np = _config_inputs((8, 3, 4, 5), "float16", options, weights)
    x, dy = backend.asarray(x_np, "float16"), backend.asarray(dy_np, "float16")
    batch_weights = _on_backend(backend, weights_np, "float16")
    state = _initial_state(x, options, initializers, batch_weights)
    _, _, dx, dgamma, dbeta = _run_vjp(backend, x, dy, state, batch_weights, options)
    assert "float16" in str(dx.dtype)
    assert state_dtype in str(dgamma.dtype) and state_dtype in str(dbeta.dtype)
    # Against float64 autodiff from the same (rounded) inputs and state.
    state64 = bn.BatchNormState(
        **{k: None if v is None else backend.to_numpy(v).astype(np.float64) for k, v in state._asdict().items()}
    )
    reference = _torch_autodiff(
        backend.to_numpy(x).astype(np.float64), backend.to_numpy(dy).astype(np.float64), state64,
        None if batch_weights is None else backend.to_numpy(batch_weights).astype(np.float64),
        {**options, "fused": False}, "float64",
    )
    for name, ours, theirs in zip(("dx", "dgamma", "dbeta"), (dx, dgamma, dbeta), reference[1:]):
        assert_close(backend.to_numpy(ours), theirs, TOLERANCE["float16"], name)

"""The analytic backward passes against autodiff through the forward.

``batch_norm_vjp`` and ``fused_batch_norm_grad`` are checked on every backend
against PyTorch autograd (float64 where the path allows it) through
``batch_norm`` / ``fused_batch_norm`` and, on JAX, against ``jax.grad``. Exact
numbers against TensorFlow are the conformance suite's job (its goldens hold
``tf.gradients`` through tf-slim); these tests pin the mathematics, the
dtype contract, validation, purity, laziness and tracing.
"""

from __future__ import annotations

import re
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from conformance.backends import Backend

import bn_portable as bn
from bn_portable._kernels import _backward

RNG = np.random.default_rng(20261128)

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

TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}


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


def assert_close(actual, expected, rtol, what=""):
    """Normwise: max |actual − expected| ≤ rtol·max |expected| (elementwise ulps of sums vary)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    error = float(np.abs(actual - expected).max(initial=0.0))
    assert error <= rtol * scale, f"{what}: max error {error:.3e} > {rtol:.0e} x {scale:.3e}"


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
# fused_batch_norm_grad

FUSED_SHAPES = {"NHWC": (2, 3, 4, 5), "NCHW": (2, 5, 3, 4), "NDHWC": (2, 2, 3, 2, 5), "NCDHW": (2, 5, 2, 3, 2)}


def _fused_inputs(data_format, is_training):
    shape = FUSED_SHAPES[data_format]
    channel = 1 if data_format in ("NCHW", "NCDHW") else len(shape) - 1
    axes = tuple(a for a in range(len(shape)) if a != channel)
    x = RNG.normal(3.0, 2.0, size=shape).astype(np.float32)
    dy = RNG.normal(0.1, 1.0, size=shape).astype(np.float32)
    scale = RNG.normal(1.0, 0.5, size=shape[channel]).astype(np.float32)
    if is_training:
        # What the forward's reserve spaces hold: batch mean and biased variance.
        mean, variance = x.mean(axis=axes, dtype=np.float64), x.astype(np.float64).var(axis=axes)
    else:
        mean = RNG.normal(3.0, 1.0, size=shape[channel])
        variance = RNG.uniform(0.5, 4.0, size=shape[channel])
    return x, dy, scale, mean.astype(np.float32), variance.astype(np.float32), channel, axes


def _textbook_fused_grad(x, dy, scale, mean, variance, epsilon, channel, axes, is_training):
    """The formulas of TF's kernel comment, in float64."""
    shape = [1] * x.ndim
    shape[channel] = -1
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean, variance, scale = (np.asarray(a, np.float64).reshape(shape) for a in (mean, variance, scale))
    inv = 1 / np.sqrt(variance + np.float64(np.float32(epsilon)))
    normalized = (x - mean) * inv
    dscale = (dy * normalized).sum(axis=axes)
    doffset = dy.sum(axis=axes)
    if is_training:
        dx = scale * inv * (
            dy - dy.mean(axis=axes, keepdims=True)
            - normalized * (dy * normalized).mean(axis=axes, keepdims=True)
        )
    else:
        dx = dy * scale * inv
    return dx, dscale, doffset


@pytest.mark.parametrize("is_training", [True, False], ids=["train", "inference"])
@pytest.mark.parametrize("data_format", list(FUSED_SHAPES))
def test_fused_batch_norm_grad_matches_the_formulas(backend: Backend, data_format, is_training):
    x, dy, scale, mean, variance, channel, axes = _fused_inputs(data_format, is_training)
    args = [backend.asarray(a, "float32") for a in (dy, x, scale, mean, variance)]
    dx, dscale, doffset = backend.call(
        lambda *a: bn.fused_batch_norm_grad(*a, epsilon=1e-3, data_format=data_format, is_training=is_training),
        *args,
    )
    expected = _textbook_fused_grad(x, dy, scale, mean, variance, 1e-3, channel, axes, is_training)
    for name, ours, theirs in zip(("dx", "dscale", "doffset"), (dx, dscale, doffset), expected):
        assert_close(backend.to_numpy(ours), theirs, 2e-6, name)
        assert "float32" in str(ours.dtype)


@pytest.mark.parametrize("is_training", [True, False], ids=["train", "inference"])
@pytest.mark.parametrize("data_format", list(FUSED_SHAPES))
def test_fused_batch_norm_grad_matches_autodiff(data_format, is_training):
    """Against torch.autograd and jax.grad through ``fused_batch_norm`` itself."""
    x, dy, scale, mean, variance, *_ = _fused_inputs(data_format, is_training)
    kwargs = {"epsilon": 1e-3, "data_format": data_format, "is_training": is_training}
    ours = bn.fused_batch_norm_grad(dy, x, scale, mean, variance, **kwargs)
    stats = (None, None) if is_training else (mean, variance)

    torch = pytest.importorskip("torch")
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, scale, np.zeros_like(scale))]
    stats_t = [None if s is None else torch.tensor(s) for s in stats]
    y = bn.fused_batch_norm(*leaves, *stats_t, **kwargs)[0]
    for name, mine, theirs in zip(("dx", "dscale", "doffset"), ours, torch.autograd.grad(y, leaves, torch.tensor(dy))):
        assert_close(mine, theirs.numpy(), 2e-5, f"torch {name}")

    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    stats_j = [None if s is None else jnp.asarray(s) for s in stats]

    def loss(x_, scale_, offset_):
        return jnp.sum(bn.fused_batch_norm(x_, scale_, offset_, *stats_j, **kwargs)[0] * jnp.asarray(dy))

    grads = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(scale), jnp.zeros_like(jnp.asarray(scale)))
    for name, mine, theirs in zip(("dx", "dscale", "doffset"), ours, grads):
        assert_close(mine, np.asarray(theirs), 2e-5, f"jax {name}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_batch_norm_grad_half_inputs_compute_in_float32(backend: Backend, dtype):
    if dtype not in backend.dtypes:
        pytest.skip(f"{backend.name} has no {dtype}")
    x, dy, scale, mean, variance, channel, axes = _fused_inputs("NHWC", True)
    x_b, dy_b = backend.asarray(x, dtype), backend.asarray(dy, dtype)
    # Statistics of the rounded input, as the forward would have computed them.
    x_rounded = backend.to_numpy(x_b).astype(np.float64)
    mean, variance = x_rounded.mean(axis=axes).astype(np.float32), x_rounded.var(axis=axes).astype(np.float32)
    args = [x_b, dy_b] + [backend.asarray(a, "float32") for a in (scale, mean, variance)]
    dx, dscale, doffset = backend.call(lambda x_, dy_, s, m, v: bn.fused_batch_norm_grad(dy_, x_, s, m, v), *args)
    assert dtype in str(dx.dtype)
    assert "float32" in str(dscale.dtype) and "float32" in str(doffset.dtype)
    expected = _textbook_fused_grad(
        x_rounded, backend.to_numpy(dy_b), scale, mean, variance, 1e-3, channel, axes, True
    )
    assert_close(backend.to_numpy(dx), expected[0], TOLERANCE[dtype], "dx")
    assert_close(backend.to_numpy(dscale), expected[1], 1e-5, "dscale")
    assert_close(backend.to_numpy(doffset), expected[2], 1e-5, "doffset")


def test_fused_batch_norm_grad_of_an_empty_batch_is_zero():
    x = np.zeros((0, 2, 2, 3), np.float32)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    for is_training in (True, False):
        dx, dscale, doffset = bn.fused_batch_norm_grad(x, x, ones, zeros, ones, is_training=is_training)
        assert dx.shape == x.shape and dx.dtype == np.float32
        np.testing.assert_array_equal(dscale, zeros)
        np.testing.assert_array_equal(doffset, zeros)


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


# --------------------------------------------------------------------------
# validation, purity, the fast-path hook

X = RNG.normal(size=(4, 3, 2, 5)).astype(np.float32)
DY = RNG.normal(size=X.shape).astype(np.float32)
ONES = np.ones(5, np.float32)
ZEROS = np.zeros(5, np.float32)


def _pattern(name):
    return re.escape(name)


def _fused_call(**changes):
    call = {"dy": DY, "x": X, "scale": ONES, "mean": ZEROS, "variance": ONES}
    call.update(changes)
    return lambda: bn.fused_batch_norm_grad(**call)


def _torch_array(array):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(array)


FUSED_GRAD_ERRORS = [
    ("dy-shape", lambda: _fused_call(dy=DY[:2]), ValueError, "dy"),
    ("dy-dtype", lambda: _fused_call(dy=DY.astype(np.float16)), TypeError, "dy"),
    ("dy-list", lambda: _fused_call(dy=DY.tolist()), TypeError, "dy"),
    ("dy-library", lambda: _fused_call(dy=_torch_array(DY)), TypeError, "dy"),
    ("dy-none", lambda: _fused_call(dy=None), TypeError, "dy"),
    ("x-rank3", lambda: _fused_call(x=X[0], dy=DY[0]), ValueError, "x"),
    ("x-float64", lambda: _fused_call(x=X.astype(np.float64), dy=DY.astype(np.float64)), TypeError, "x"),
    ("x-int", lambda: _fused_call(x=X.astype(np.int32), dy=DY.astype(np.int32)), TypeError, "x"),
    ("scale-float64", lambda: _fused_call(scale=ONES.astype(np.float64)), TypeError, "scale"),
    ("scale-shape", lambda: _fused_call(scale=np.ones(4, np.float32)), ValueError, "scale"),
    ("mean-shape", lambda: _fused_call(mean=np.zeros((1, 5), np.float32)), ValueError, "mean"),
    ("mean-none", lambda: _fused_call(mean=None), TypeError, "mean"),
    ("variance-none", lambda: _fused_call(variance=None), TypeError, "variance"),
    ("variance-library", lambda: _fused_call(variance=_torch_array(ONES)), TypeError, "variance"),
    ("data_format-unknown", lambda: _fused_call(data_format="CHWN"), ValueError, "data_format"),
    ("epsilon-negative", lambda: _fused_call(epsilon=-1.0), ValueError, "epsilon"),
    ("epsilon-string", lambda: _fused_call(epsilon="0.001"), TypeError, "epsilon"),
    ("is_training", lambda: _fused_call(is_training=1), TypeError, "is_training"),
]


@pytest.mark.parametrize(("make", "error", "name"), [e[1:] for e in FUSED_GRAD_ERRORS], ids=[e[0] for e in FUSED_GRAD_ERRORS])
def test_fused_batch_norm_grad_rejects_bad_arguments(make, error, name):
    with pytest.raises(error, match=_pattern(name)):
        make()()


@pytest.mark.parametrize(("rank", "data_format"), [(5, "NHWC"), (5, "NCHW"), (4, "NDHWC"), (4, "NCDHW")])
def test_fused_batch_norm_grad_rank_must_match_the_format(rank, data_format):
    """TensorFlow's shape function: NHWC/NCHW take rank 4, NDHWC/NCDHW rank 5."""
    x, dy = (X, DY) if rank == 4 else (X[None], DY[None])
    with pytest.raises(ValueError, match="data_format"):
        bn.fused_batch_norm_grad(dy, x, ONES, ZEROS, ONES, data_format=data_format)


VJP_ERRORS = [
    ("dy-shape", DY[:2], ValueError, "dy"),
    ("dy-transposed", np.ascontiguousarray(np.moveaxis(DY, -1, 1)), ValueError, "dy"),
    ("dy-dtype", DY.astype(np.float64), TypeError, "dy"),
    ("dy-list", DY.tolist(), TypeError, "dy"),
    ("dy-none", None, TypeError, "dy"),
]


@pytest.mark.parametrize(("dy", "error", "name"), [e[1:] for e in VJP_ERRORS], ids=[e[0] for e in VJP_ERRORS])
def test_vjp_rejects_a_bad_cotangent(dy, error, name):
    _, _, vjp = bn.batch_norm_vjp(X, scale=True)
    with pytest.raises(error, match=_pattern(name)):
        vjp(dy)


def test_vjp_rejects_a_cotangent_of_another_library():
    _, _, vjp = bn.batch_norm_vjp(X, scale=True)
    with pytest.raises(TypeError, match="dy"):
        vjp(_torch_array(DY))


def test_vjp_refuses_an_activation_fn():
    with pytest.raises(ValueError, match="activation_fn"):
        bn.batch_norm_vjp(X, activation_fn=lambda y: y)
    # A non-callable is the usual TypeError of batch_norm's validation.
    with pytest.raises(TypeError, match="activation_fn"):
        bn.batch_norm_vjp(X, activation_fn="relu")


@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"data_format": "NCDHW"}, ValueError, "data_format"),
        ({"batch_weights": np.ones(3, np.float32)}, ValueError, "batch_weights"),
        ({"renorm": True, "batch_weights": np.ones(4, np.float32)}, ValueError, "renorm"),
        ({"state": bn.BatchNormState()}, ValueError, "state"),
    ],
    ids=["data_format", "batch_weights", "renorm+weights", "state"],
)
def test_batch_norm_vjp_validates_like_batch_norm(options, error, name):
    with pytest.raises(error, match=_pattern(name)):
        bn.batch_norm_vjp(X, **options)


def _frozen(array):
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


def test_nothing_is_mutated_numpy():
    x, dy, weights = _frozen(X), _frozen(DY), _frozen(np.linspace(0.5, 1.5, X.shape[0]).astype(np.float32))
    _, state = bn.batch_norm(x, scale=True, is_training=False)
    state = bn.BatchNormState(**{k: None if v is None else _frozen(v) for k, v in state._asdict().items()})
    copies = [np.array(a) for a in (x, dy, weights, *[v for v in state if v is not None])]
    # Read-only arrays raise on any in-place write; the copies catch any other change.
    _, _, vjp = bn.batch_norm_vjp(x, state, scale=True, batch_weights=weights)
    first = vjp(dy)
    second = vjp(dy)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    scale, mean, variance = _frozen(ONES), _frozen(X.mean(axis=(0, 1, 2))), _frozen(X.var(axis=(0, 1, 2)))
    bn.fused_batch_norm_grad(dy, x, scale, mean, variance)
    for before, after in zip(copies, (x, dy, weights, *[v for v in state if v is not None])):
        np.testing.assert_array_equal(before, after)


def test_nothing_is_mutated_torch():
    torch = pytest.importorskip("torch")
    x, dy = torch.from_numpy(X.copy()), torch.from_numpy(DY.copy())
    _, state = bn.batch_norm(x, scale=True, renorm=True, is_training=False)
    arrays = [x, dy, *[v for v in state if v is not None]]
    versions = [a._version for a in arrays]
    copies = [a.clone() for a in arrays]
    _, _, vjp = bn.batch_norm_vjp(x, state, scale=True, renorm=True, renorm_clipping={"rmax": 1.1})
    vjp(dy)
    bn.fused_batch_norm_grad(dy, x, torch.ones(5), x.mean(dim=(0, 1, 2)), x.var(dim=(0, 1, 2)))
    assert [a._version for a in arrays] == versions
    for before, after in zip(copies, arrays):
        assert torch.equal(before, after)


def test_results_stay_lazy_on_dask():
    da = pytest.importorskip("dask.array")
    from conformance.backends import by_name

    backend = by_name("dask")
    x = backend.asarray(X, "float32")
    dy = backend.asarray(DY, "float32")
    with backend.context():  # any compute inside raises
        _, _, vjp = bn.batch_norm_vjp(x, scale=True, batch_weights=da.ones(X.shape[0], chunks=2))
        grads = vjp(dy)
        fused = bn.fused_batch_norm_grad(dy, x, da.ones(5, dtype="float32"), da.zeros(5, dtype="float32"), da.ones(5, dtype="float32"))
    assert all(isinstance(g, da.Array) for g in (*grads, *fused))


def test_vjp_traces_under_jax_jit():
    jax = pytest.importorskip("jax")

    @jax.jit
    def step(x, dy):
        y, state, vjp = bn.batch_norm_vjp(x, scale=True, renorm=True, renorm_clipping={"rmax": 1.2, "dmax": 0.2})
        return y, state, vjp(dy)

    _, _, (dx, dgamma, dbeta) = step(X, DY)
    _, _, vjp = bn.batch_norm_vjp(X, scale=True, renorm=True, renorm_clipping={"rmax": 1.2, "dmax": 0.2})
    for ours, eager in zip((dx, dgamma, dbeta), vjp(DY)):
        assert_close(np.asarray(ours), eager, 1e-6)


def test_kernels_are_overridable(monkeypatch):
    """A library's fast path replaces the two kernels; NotImplemented hands the call back."""
    from bn_portable import _native

    calls = []

    def spy(name):
        def fast(*args, xp):
            calls.append(name)
            return NotImplemented

        return fast

    fake = SimpleNamespace(
        enabled=bn.fast_paths_enabled,
        KERNELS={
            _native.Kernel.GRADIENT_SUMS: spy("gradient_sums"),
            _native.Kernel.GRADIENT_INPUT: spy("gradient_input"),
        },
    )
    import array_api_compat

    monkeypatch.setitem(_native._MODULES, array_api_compat.array_namespace(X).__name__, fake)
    expected = bn.fused_batch_norm_grad(DY, X, ONES, ZEROS, ONES)
    with bn.fast_paths(True):
        _, _, vjp = bn.batch_norm_vjp(X, scale=True)
        vjp(DY)
    assert calls.count("gradient_sums") >= 2 and calls.count("gradient_input") >= 2
    assert _backward.gradient_sums.generic is not None and _backward.gradient_input.generic is not None
    with bn.fast_paths(False):
        again = bn.fused_batch_norm_grad(DY, X, ONES, ZEROS, ONES)
    for a, b in zip(expected, again):
        np.testing.assert_array_equal(a, b)

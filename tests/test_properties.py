"""Properties of batch normalization, over shapes, dtypes, layouts and options drawn at random.

On every CPU backend (the ``backend`` fixture: jax-jit traces each call, Dask
must stay lazy). The default Hypothesis profile, "ci", is fixed and
derandomized; ``HYPOTHESIS_PROFILE=thorough`` draws hundreds of examples per
property at random (see tests/conftest.py), e.g.

    HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py --backend numpy

Data are drawn moderately conditioned (|mean|/σ ≤ 10): the accuracy of
ill-conditioned sums is checked against TensorFlow's goldens instead.
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

import bn_portable as bn

#: Tolerance on values of order 1, per dtype (float16's covers its rounding of y).
ATOL = {"float16": 4e-2, "bfloat16": 2e-1, "float32": 5e-5, "float64": 1e-10}


@st.composite
def batches(draw, ranks=(2, 3, 4, 5), dtypes=("float16", "float32", "float64"), min_count=2):
    """``(x as float64 values exactly representable in dtype, dtype, channel axis, options)``."""
    rank = draw(st.sampled_from(ranks))
    shape = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    dtype = draw(st.sampled_from(dtypes))
    data_format = draw(st.sampled_from(("NHWC", "NCHW")))
    channel = 1 if data_format == "NCHW" else rank - 1
    count = int(np.prod(shape)) // shape[channel]
    if count < min_count:
        shape = (shape[0] + min_count, *shape[1:]) if channel != 0 else shape
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** draw(st.floats(-1, 1))
    offset = draw(st.floats(-10, 10)) * scale
    x = rng.normal(offset, scale, size=shape)
    x = x.astype(dtype).astype(np.float64)
    options = {
        "data_format": data_format,
        "epsilon": draw(st.sampled_from((1e-3, 1e-5, 0.1))),
        "center": draw(st.booleans()),
        "scale": draw(st.booleans()),
    }
    return x, dtype, channel, options


def _runs_in_tensorflow(x, dtype, options):
    """False where TensorFlow (and bn_portable) refuse: tf-slim's fused kernel on float64."""
    slim_fused = options.get("fused") and x.ndim in (2, 4) and (
        x.ndim == 2 or options.get("zero_debias_moving_mean")
    )
    return not (slim_fused and dtype == "float64")


def _axes(x, channel):
    return tuple(axis for axis in range(x.ndim) if axis != channel)


def _per_channel(values, x, channel):
    shape = [1] * x.ndim
    shape[channel] = -1
    return np.reshape(values, shape)


def _run(backend, function, x, dtype, *extra):
    """``function(x_backend, *extra_backend)`` on the backend, results as NumPy float64."""
    xb = backend.asarray(x, dtype)
    extra = [None if e is None else backend.asarray(e, dtype) for e in extra]
    y, state = backend.call(function, xb, *extra)
    as64 = lambda v: None if v is None else backend.to_numpy(v).astype(np.float64)  # noqa: E731
    return as64(y), {k: as64(v) for k, v in state._asdict().items() if v is not None}


@given(batches(), st.sampled_from(("keras", "fused", "zero_debias")))
def test_training_output_has_zero_mean_and_the_normalized_variance(backend, drawn, path):
    x, dtype, channel, options = drawn
    assume(dtype in backend.dtypes)
    options = {**options, "center": False, "scale": False}
    options["fused"] = path != "keras"
    options["zero_debias_moving_mean"] = path == "zero_debias"
    assume(_runs_in_tensorflow(x, dtype, options))
    y, _ = _run(backend, lambda x_: bn.batch_norm(x_, **options), x, dtype)
    axes = _axes(x, channel)
    mean, variance = x.mean(axis=axes), x.var(axis=axes)
    # TensorFlow's composite folds y = x·inv + (−mean·inv): each term rounds at
    # |mean|·inv, so the error bound grows with |mean|/σ per channel.
    bound = ATOL[dtype] * (1.0 + np.abs(mean) / np.sqrt(variance + options["epsilon"]))
    assert np.all(np.abs(y.mean(axis=axes)) <= bound)
    expected = variance / (variance + options["epsilon"])
    assert np.all(np.abs(y.var(axis=axes) - expected) <= 2 * bound * (1.0 + bound))


@given(batches(), st.booleans())
def test_inference_equals_the_closed_form(backend, drawn, fused):
    x, dtype, channel, options = drawn
    assume(dtype in backend.dtypes)
    assume(_runs_in_tensorflow(x, dtype, {"fused": fused}))
    channels = x.shape[channel]
    rng = np.random.default_rng(channels)
    moving_mean = rng.normal(np.mean(x), 1.0, channels)
    moving_variance = rng.uniform(0.5, 2.0, channels) * np.var(x)
    gamma, beta = rng.normal(1.0, 0.3, channels), rng.normal(0.0, 1.0, channels)
    _, template = bn.batch_norm(np.zeros(x.shape, dtype), fused=fused, **options)
    state_dtype = str(template.moving_mean.dtype)
    values = {"moving_mean": moving_mean, "moving_variance": moving_variance, "gamma": gamma, "beta": beta}
    values = {k: v.astype(state_dtype).astype(np.float64) for k, v in values.items()}
    state_np = template._replace(**{k: v for k, v in values.items() if getattr(template, k) is not None})
    state_b = bn.BatchNormState(*(None if v is None else backend.asarray(np.asarray(v), state_dtype) for v in state_np))
    xb = backend.asarray(x, dtype)
    y, new_state = backend.call(
        lambda x_, s_: bn.batch_norm(x_, s_, is_training=False, fused=fused, **options), xb, state_b
    )
    y = backend.to_numpy(y).astype(np.float64)
    b = {k: _per_channel(v, x, channel) for k, v in values.items()}
    expected = (x - b["moving_mean"]) / np.sqrt(b["moving_variance"] + options["epsilon"])
    if options["scale"]:
        expected = expected * b["gamma"]
    if options["center"]:
        expected = expected + b["beta"]
    # float16 rounds the folded terms x·inv and mean·inv (TensorFlow's formula).
    spread = 1.0 + np.max(np.abs(b["moving_mean"]) / np.sqrt(b["moving_variance"]))
    np.testing.assert_allclose(y, expected, atol=ATOL[dtype] * spread * 4, rtol=ATOL[dtype])
    for field, value in zip(new_state._fields, new_state):
        if value is not None:
            np.testing.assert_array_equal(backend.to_numpy(value), np.asarray(getattr(state_np, field)))


@given(batches(ranks=(3, 4, 5)), st.booleans())
def test_nchw_equals_transposed_nhwc(backend, drawn, fused):
    x, dtype, _, options = drawn
    assume(dtype in backend.dtypes)
    nhwc = {**options, "data_format": "NHWC", "fused": fused}
    nchw = {**options, "data_format": "NCHW", "fused": fused}
    x_nchw = np.moveaxis(x, -1, 1)
    y_last, state_last = _run(backend, lambda x_: bn.batch_norm(x_, **nhwc), x, dtype)
    y_first, state_first = _run(backend, lambda x_: bn.batch_norm(x_, **nchw), x_nchw, dtype)
    np.testing.assert_allclose(np.moveaxis(y_first, 1, -1), y_last, atol=ATOL[dtype], rtol=ATOL[dtype])
    assert state_first.keys() == state_last.keys()
    for field, value in state_last.items():
        np.testing.assert_allclose(state_first[field], value, atol=ATOL[dtype], rtol=ATOL[dtype], err_msg=field)


@given(batches(ranks=(4,), dtypes=("float16", "float32")), st.floats(0.0, 1.0))
def test_fused_and_composite_agree_and_their_states_differ_by_the_bessel_factor(backend, drawn, decay):
    x, dtype, channel, options = drawn
    assume(dtype in backend.dtypes)
    options = {**options, "decay": decay}
    y_fused, fused = _run(backend, lambda x_: bn.batch_norm(x_, fused=True, **options), x, dtype)
    y_plain, plain = _run(backend, lambda x_: bn.batch_norm(x_, fused=False, **options), x, dtype)
    np.testing.assert_allclose(y_fused, y_plain, atol=ATOL[dtype], rtol=ATOL[dtype])
    assert fused.keys() == plain.keys()
    np.testing.assert_allclose(fused["moving_mean"], plain["moving_mean"], atol=ATOL["float32"] * 10)
    # Both move from the initial 1 toward the batch variance, the fused one toward its
    # Bessel-corrected value: that factor is the only difference between the states.
    n = x.size // x.shape[channel]
    weight = np.float64(np.float32(1.0 - decay))
    variance = x.var(axis=_axes(x, channel))
    tolerance = 1e-4 * (1.0 + float(np.max(variance)))
    np.testing.assert_allclose(plain["moving_variance"], 1.0 - (1.0 - variance) * weight, atol=tolerance)
    np.testing.assert_allclose(
        fused["moving_variance"], 1.0 - (1.0 - variance * n / (n - 1)) * weight, atol=tolerance
    )


@st.composite
def gradient_cases(draw):
    x, _, channel, options = draw(batches(dtypes=("float64",)))
    path = draw(st.sampled_from(("keras", "fused", "zero_debias", "weighted")))
    return x, channel, options, path


@given(gradient_cases())
def test_vjp_matches_finite_differences_in_float64(backend, drawn):
    x, channel, options, path = drawn
    assume("float64" in backend.dtypes)
    options = {**options, "fused": path == "fused", "zero_debias_moving_mean": path == "zero_debias"}
    assume(_runs_in_tensorflow(x, "float64", options))
    rng = np.random.default_rng(x.size)
    channels = x.shape[channel]
    weights = rng.uniform(0.5, 2.0, x.shape[0]) if path == "weighted" else None
    gamma, beta = rng.normal(1.0, 0.3, channels), rng.normal(0.0, 1.0, channels)
    dy = rng.normal(size=x.shape)
    u_x, u_gamma, u_beta = rng.normal(size=x.shape), rng.normal(size=channels), rng.normal(size=channels)

    def forward(x_, w_, g_, b_, dy_):
        initial = {}
        if options["scale"]:
            initial["gamma"] = g_
        if options["center"]:
            initial["beta"] = b_
        y, _, vjp = bn.batch_norm_vjp(x_, batch_weights=w_, param_initializers=initial, **options)
        return y, vjp(dy_)

    def run(x_, g_, b_):
        args = [x_, weights, g_, b_, dy]
        y, grads = backend.call(forward, *(None if a is None else backend.asarray(a, "float64") for a in args))
        return backend.to_numpy(y), [None if g is None else backend.to_numpy(g) for g in grads]

    _, (dx, dgamma, dbeta) = run(x, gamma, beta)
    step = 1e-6 * max(1.0, float(np.std(x)))
    plus, _ = run(x + step * u_x, gamma + step * u_gamma, beta + step * u_beta)
    minus, _ = run(x - step * u_x, gamma - step * u_gamma, beta - step * u_beta)
    numeric = np.sum(dy * (plus - minus)) / (2 * step)
    analytic = np.sum(dx * u_x)
    if options["scale"]:
        analytic += np.sum(dgamma * u_gamma)
    else:
        assert dgamma is None
    if options["center"]:
        analytic += np.sum(dbeta * u_beta)
    else:
        assert dbeta is None
    scale = np.sum(np.abs(dy)) / max(float(np.std(x)), 1e-3) + 1.0
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6 * scale)

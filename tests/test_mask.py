"""``mask=`` (Keras 3's meaning) on ``batch_norm``, ``batch_norm_vjp``, ``moments``, ``partial_moments``.

Masked-out elements do not count in the statistics, every element is
normalized with them. Checked against float64 formulas, finite differences and
autodiff of the same composite; on replicas in ``test_mask_replicas.py``, under
``jax.jit`` and ``torch.compile`` in ``test_mask_compile.py``, and the masks
that are refused in ``test_mask_validation.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from conformance.backends import Backend

import bn_portable as bn
from mask_cases import _channel, _close, _data, _masked_truth

RNG = np.random.default_rng(20261205)

#: (id, x shape, options): layouts and ranks of the Keras layer's composite path.
LAYOUTS = [
    ("r3/NHWC", (6, 5, 3), {}),
    ("r4/NCHW", (4, 3, 2, 5), {"data_format": "NCHW"}),
    ("r2", (9, 4), {}),
    ("r4/NHWC", (4, 2, 3, 2), {}),
]


def _train(backend: Backend, x, mask, options, dtype="float32"):
    """One masked training step on ``backend`` (jitted on jax-jit, lazily on Dask)."""

    def call(x, mask):
        return bn.batch_norm(x, mask=mask, **options)

    key = ("mask-train", tuple(sorted(options.items())))
    return backend.call(call, backend.asarray(x, dtype), backend.asarray(mask, "bool"), static=key)


@pytest.mark.parametrize(("shape", "options"), [c[1:] for c in LAYOUTS], ids=[c[0] for c in LAYOUTS])
def test_layer_normalizes_every_element_with_the_masked_statistics(backend: Backend, shape, options) -> None:
    x, mask = _data(shape, options)
    options = {**options, "decay": 0.75, "scale": True}
    y, state = _train(backend, x, mask, options)
    channel = _channel(shape, options)
    mean, variance = _masked_truth(x.astype(np.float32), mask, channel)
    # The moving statistics start at 0 and 1 and move a quarter of the way.
    _close(backend.to_numpy(state.moving_mean), 0.25 * mean, 1e-5, "moving_mean")
    _close(backend.to_numpy(state.moving_variance), 0.75 + 0.25 * variance, 1e-5, "moving_variance")
    broadcast = [-1 if a == channel else 1 for a in range(len(shape))]
    expected = (x.astype(np.float32) - mean.reshape(broadcast)) / np.sqrt(variance + 1e-3).reshape(broadcast)
    _close(backend.to_numpy(y), expected, 2e-5, "y")
    # The statistics are not the unmasked ones: the mask did something.
    unmasked = x.astype(np.float64).mean(axis=tuple(a for a in range(len(shape)) if a != channel))
    assert np.max(np.abs(0.25 * unmasked - backend.to_numpy(state.moving_mean))) > 1e-3


def test_an_all_true_mask_gives_the_unmasked_results(backend: Backend) -> None:
    x, _ = _data((5, 4, 3), {})
    mask = np.ones((5, 4), bool)
    y, state = _train(backend, x, mask, {"scale": True, "decay": 0.5})
    y_plain, state_plain = backend.call(
        lambda x: bn.batch_norm(x, scale=True, decay=0.5), backend.asarray(x, "float32"),
        static=("mask-plain",),
    )
    # The same statistics summed in another order (the weighted passes): within rounding.
    _close(backend.to_numpy(y), backend.to_numpy(y_plain), 2e-5, "y")
    for field in ("moving_mean", "moving_variance"):
        _close(backend.to_numpy(getattr(state, field)), backend.to_numpy(getattr(state_plain, field)), 1e-6, field)


def test_numeric_masks_count_as_frequency_weights(backend: Backend) -> None:
    x, mask = _data((6, 5, 3), {})
    numeric = mask.astype(np.float32) * 2.0  # the same statistics: only ratios count
    _, state_bool = _train(backend, x, mask, {"decay": 0.0})
    _, state_numeric = backend.call(
        lambda x, m: bn.batch_norm(x, mask=m, decay=0.0), backend.asarray(x, "float32"),
        backend.asarray(numeric, "float32"), static=("mask-numeric",),
    )
    for field in ("moving_mean", "moving_variance"):
        _close(backend.to_numpy(getattr(state_numeric, field)), backend.to_numpy(getattr(state_bool, field)),
               1e-6, field)


def test_an_all_zero_mask_gives_zero_statistics_and_moves_toward_them(backend: Backend) -> None:
    """Keras 3 divides by Σm + 1e-7 and tf-keras uses weighted_moments' div_no_nan: 0 either way."""
    x, _ = _data((4, 3, 2), {})
    mask = np.zeros((4, 3), bool)
    y, state = _train(backend, x, mask, {"decay": 0.5, "scale": True})
    _close(backend.to_numpy(state.moving_mean), np.zeros(2), 0.0, "moving_mean")
    _close(backend.to_numpy(state.moving_variance), np.full(2, 0.5), 0.0, "moving_variance")
    # Every element normalized with mean 0 and variance 0: y = x / sqrt(ε).
    _close(backend.to_numpy(y), x / np.sqrt(1e-3), 2e-6, "y")


def test_inference_ignores_the_mask(backend: Backend) -> None:
    x, mask = _data((4, 3, 2), {})
    _, state = _train(backend, x, mask, {"scale": True})

    def infer(x, state, mask):
        return bn.batch_norm(x, state, scale=True, is_training=False, mask=mask)[0]

    def infer_plain(x, state):
        return bn.batch_norm(x, state, scale=True, is_training=False)[0]

    x_b = backend.asarray(x, "float32")
    masked = backend.call(infer, x_b, state, backend.asarray(mask, "bool"), static=("mask-infer",))
    plain = backend.call(infer_plain, x_b, state, static=("mask-infer-plain",))
    np.testing.assert_array_equal(backend.to_numpy(masked), backend.to_numpy(plain))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_counts_in_float32(backend: Backend, dtype: str) -> None:
    if dtype not in backend.dtypes:
        pytest.skip(f"{backend.name} has no {dtype}")
    # 600 counted elements per channel: a bfloat16 count would be rounded.
    x, mask = _data((40, 25, 2), {}, keep=0.6)
    x = x.astype(np.float32)
    x_half = backend.to_numpy(backend.asarray(x, dtype)).astype(np.float32)
    _, state = _train(backend, x, mask, {"decay": 0.0}, dtype=dtype)
    mean, variance = _masked_truth(x_half, mask, 2)
    assert backend.to_numpy(state.moving_mean).dtype == np.float32  # the Keras layer's float32 state
    _close(backend.to_numpy(state.moving_mean), mean, 1e-5, "moving_mean")
    _close(backend.to_numpy(state.moving_variance), variance, 1e-4, "moving_variance")
    xs = backend.asarray(x, dtype)
    masked_mean, _ = backend.call(
        lambda x, m: bn.moments(x, (0, 1), mask=m), xs, backend.asarray(mask[..., None], "bool"),
        static=("mask-moments-half",),
    )
    _close(backend.to_numpy(masked_mean), mean, 2 ** -8, "moments(mask=) mean")


def test_moments_with_a_mask_are_the_weighted_moments(backend: Backend) -> None:
    x = (RNG.standard_normal((8, 5, 3)) + 7.0).astype(np.float32)
    mask = RNG.random((8, 5, 1)) < 0.5
    mask[0] = True
    xs, ms = backend.asarray(x, "float32"), backend.asarray(mask, "bool")
    masked = backend.call(lambda x, m: bn.moments(x, (0, 1), mask=m, keepdims=True), xs, ms,
                          static=("mask-moments",))
    weighted = backend.call(
        lambda x, m: bn.weighted_moments(x, (0, 1), m, keepdims=True), xs, backend.asarray(mask, "float32"),
        static=("mask-weighted",),
    )
    for a, b in zip(masked, weighted):
        np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b))
    mean, variance = _masked_truth(x, mask[..., 0], 2)
    _close(backend.to_numpy(masked[0]).reshape(-1), mean, 1e-6, "mean")
    _close(backend.to_numpy(masked[1]).reshape(-1), variance, 1e-5, "variance")
    # No element counted: 0, not NaN.
    empty = backend.call(lambda x, m: bn.moments(x, 0, mask=m), xs, backend.asarray(np.zeros(3, bool), "bool"),
                         static=("mask-moments-empty",))
    _close(backend.to_numpy(empty[0]), np.zeros((5, 3)), 0.0, "empty mean")
    _close(backend.to_numpy(empty[1]), np.zeros((5, 3)), 0.0, "empty variance")


def test_partial_moments_of_masked_shards_merge_to_the_whole(backend: Backend) -> None:
    if backend.jit:
        pytest.skip("merge_moments is exercised eagerly; jit is covered by moments")
    x = (RNG.standard_normal((10, 4, 3)) * 2.0 + 30.0).astype(np.float32)
    mask = RNG.random((10, 4, 1)) < 0.4
    mask[:3] = False  # the first shard counts nothing at all
    with backend.context():
        parts = [
            bn.partial_moments(backend.asarray(x[s], "float32"), (0, 1), mask=backend.asarray(mask[s], "bool"))
            for s in (slice(0, 3), slice(3, 7), slice(7, 10))
        ]
        merged = bn.merge_moments(*parts)
        mean, variance = merged.mean_variance()
    truth_mean, truth_variance = _masked_truth(x, mask[..., 0], 2)
    _close(backend.to_numpy(merged.count), np.full(3, mask.sum()), 0.0, "count")
    _close(backend.to_numpy(mean), truth_mean, 1e-6, "mean")
    _close(backend.to_numpy(variance), truth_variance, 1e-5, "variance")


# --- gradients ----------------------------------------------------------------------------------

GRADIENT_CASES = [
    ("r3/NHWC", (5, 4, 3), {"scale": True}),
    ("r4/NCHW", (3, 2, 3, 4), {"scale": True, "data_format": "NCHW"}),
    ("r2/center-only", (7, 3), {}),
    ("all-masked", (4, 2, 3), {"scale": True, "all_masked": True}),
]


@pytest.mark.parametrize(("shape", "options"), [c[1:] for c in GRADIENT_CASES], ids=[c[0] for c in GRADIENT_CASES])
def test_vjp_matches_finite_differences(shape, options) -> None:
    options = dict(options)
    all_masked = options.pop("all_masked", False)
    x, mask = _data(shape, options, seed=3)
    if all_masked:
        mask[...] = False
    rng = np.random.default_rng(5)
    channel = _channel(shape, options)
    gamma = rng.uniform(0.5, 1.5, shape[channel])
    init = {"gamma": gamma, "beta": 0.3} if options.get("scale") else {"beta": 0.3}
    state = bn.batch_norm(x, is_training=False, param_initializers=init, **options)[1]
    dy = rng.standard_normal(shape)
    _, _, vjp = bn.batch_norm_vjp(x, state, mask=mask, **options)
    dx, dgamma, dbeta = vjp(dy)

    def loss(x, state):
        return float(np.sum(bn.batch_norm(x, state, mask=mask, **options)[0] * dy))

    step = 1e-6
    numeric = np.empty_like(x)
    for index in np.ndindex(*shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (loss(up, state) - loss(down, state)) / (2 * step)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-6)
    for name, analytic in (("gamma", dgamma), ("beta", dbeta)):
        if getattr(state, name) is None:
            assert analytic is None
            continue
        value = getattr(state, name)
        numeric_p = np.empty_like(value)
        for c in range(value.shape[0]):
            up, down = value.copy(), value.copy()
            up[c] += step
            down[c] -= step
            numeric_p[c] = (loss(x, state._replace(**{name: up})) - loss(x, state._replace(**{name: down}))) / (
                2 * step
            )
        np.testing.assert_allclose(analytic, numeric_p, rtol=1e-6, atol=1e-6)
    # A masked-out element's gradient is dy·γ·inv alone: the statistics do not depend on it.
    masked_out = ~np.broadcast_to(np.expand_dims(mask, channel), shape)
    _, variance = _masked_truth(x, mask, channel)
    broadcast = [-1 if a == channel else 1 for a in range(len(shape))]
    scale = (gamma if options.get("scale") else np.ones_like(gamma)) / np.sqrt(variance + 1e-3)
    direct = dy * scale.reshape(broadcast)
    assert masked_out.any()
    np.testing.assert_allclose(dx[masked_out], direct[masked_out], rtol=1e-12)


@pytest.mark.parametrize(
    ("shape", "options", "dtype"),
    [
        ((5, 4, 3), {"scale": True}, "float64"),
        ((3, 2, 3, 4), {"scale": True, "data_format": "NCHW"}, "float64"),
        ((6, 3, 4), {"scale": True, "renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}}, "float32"),
    ],
    ids=["r3", "r4-NCHW", "renorm"],
)
def test_vjp_matches_autodiff_of_the_composite(backend: Backend, shape, options, dtype) -> None:
    """torch autograd and jax.grad through the masked forward give the vjp's gradients."""
    if backend.library not in ("torch", "jax") or "lazy" in backend.traits:
        pytest.skip("autodiff libraries only")
    x, mask = _data(shape, options, seed=11)
    dy = np.random.default_rng(12).standard_normal(shape)
    channels = shape[_channel(shape, options)]
    init = {"gamma": np.linspace(0.7, 1.3, channels).tolist(), "beta": np.linspace(-0.2, 0.2, channels).tolist()}
    xs, dys, ms = backend.asarray(x, dtype), backend.asarray(dy, dtype), backend.asarray(mask, "bool")
    with backend.context():
        _, state = bn.batch_norm(xs, is_training=False, param_initializers=init, **options)
        _, _, vjp = bn.batch_norm_vjp(xs, state, mask=ms, **options)
        expected = vjp(dys)
        if backend.library == "torch":
            import torch

            leaves = [xs.clone().requires_grad_(), state.gamma.clone().requires_grad_(),
                      state.beta.clone().requires_grad_()]
            y, _ = bn.batch_norm(leaves[0], state._replace(gamma=leaves[1], beta=leaves[2]), mask=ms, **options)
            actual = torch.autograd.grad(y, leaves, dys)
        else:
            import jax

            def loss(x, gamma, beta):
                y, _ = bn.batch_norm(x, state._replace(gamma=gamma, beta=beta), mask=ms, **options)
                return (y * dys).sum()

            actual = jax.grad(loss, argnums=(0, 1, 2))(xs, state.gamma, state.beta)
    tolerance = 1e-9 if dtype == "float64" else 1e-4
    for name, a, e in zip(("dx", "dgamma", "dbeta"), actual, expected):
        _close(backend.to_numpy(a), backend.to_numpy(e), tolerance, name)


# --- the torch module ---------------------------------------------------------------------------


def test_torch_module_forward_takes_a_mask() -> None:
    torch = pytest.importorskip("torch")
    from bn_portable.torch import BatchNorm

    x, mask = _data((4, 3, 2, 5), {"data_format": "NCHW"}, seed=51)
    xs, ms = torch.from_numpy(x.astype(np.float32)).requires_grad_(), torch.from_numpy(mask)
    module = BatchNorm(3, scale=True)
    y = module(xs, mask=ms)
    y_fn, state = bn.batch_norm(xs.detach(), mask=ms, data_format="NCHW", scale=True)
    _close(y.detach().numpy(), y_fn.numpy(), 1e-6, "y")
    _close(module.moving_mean.numpy(), state.moving_mean.numpy(), 1e-7, "moving_mean")
    (y * y).sum().backward()
    assert xs.grad is not None and module.gamma.grad is not None
    with pytest.raises(TypeError, match="mask is not a BatchNorm option"):
        BatchNorm(3, mask=ms)

"""The backward passes' validation, purity, laziness on Dask, tracing under ``jax.jit`` and fast-path hook."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

import bn_portable as bn
from bn_portable._kernels import _backward
from grad_cases import assert_close

RNG = np.random.default_rng(20261128)

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

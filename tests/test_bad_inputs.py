"""Bad input to every public function: the error's type, the argument it names, what it expects.

Each case also checks that a failed call changed nothing: every array given
(``x``, the other array arguments, each field of a given state, the values of
dicts) holds the same values, dtype and shape afterwards.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import bn_portable as bn

RNG = np.random.default_rng(17)
X = RNG.normal(1.0, 2.0, size=(4, 3, 2, 5)).astype(np.float32)
C = X.shape[-1]
F32 = np.ones(C, np.float32)
AXES = (0, 1, 2)


def x():
    return X.copy()


def channel(value=1.0, dtype=np.float32, size=C):
    return np.full(size, value, dtype)


def masked(array):
    return np.ma.masked_array(array, mask=np.zeros(array.shape, bool))


def torch_sparse(array):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(array).to_sparse()


def torch_dense(array):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(array)


def dask_unknown_chunks(array):
    da = pytest.importorskip("dask.array")
    lazy = da.from_array(array, chunks=(2, *array.shape[1:]))
    return lazy[lazy[:, 0, 0, 0] > -np.inf]  # boolean indexing: unknown chunk sizes


def state(**options):
    return bn.batch_norm(X, **options)[1]


@dataclass
class Case:
    """``call(*args, **kwargs)`` raises ``error`` with a message matching ``names`` and ``expects``."""

    id: str
    call: Callable[..., Any]
    args: tuple
    kwargs: dict
    error: type
    names: str
    expects: str


def case(id, call, args, kwargs, error, names, expects):
    return pytest.param(Case(id, call, args, kwargs, error, names, expects), id=id)


def vjp_of():
    """The vjp of a successful ``batch_norm_vjp`` call, to be fed a bad ``dy``."""
    return bn.batch_norm_vjp(X, scale=True)[2]


CASES = [
    # moments
    case("moments-x-None", bn.moments, (None, AXES), {}, TypeError, "x", r"must be an array \(NumPy"),
    case("moments-x-list", bn.moments, (X.tolist(), AXES), {}, TypeError, "x", "must be an array"),
    case("moments-x-int", bn.moments, (X.astype(np.int32), AXES), {}, TypeError, "x", "real floating dtype"),
    case("moments-x-masked", bn.moments, (masked(x()), AXES), {}, TypeError, "x", "plain dense array"),
    case("moments-x-sparse", bn.moments, (None, AXES), {"sparse": True}, TypeError, "x", r"dense \(strided\)"),
    case("moments-axes-float", bn.moments, (x(), 1.5), {}, TypeError, "axes", "an int or a sequence of ints"),
    case("moments-axes-repeat", bn.moments, (x(), (0, 0)), {}, ValueError, "axes", "must not repeat"),
    case("moments-axes-range", bn.moments, (x(), 7), {}, ValueError, "axes", r"must be in \[-4, 4\)"),
    case("moments-keepdims", bn.moments, (x(), AXES), {"keepdims": 1}, TypeError, "keepdims", "Python bool"),
    case("moments-shift-shape", bn.moments, (x(), AXES), {"shift": channel(size=7)}, ValueError, "shift", "must broadcast to shape"),
    case("moments-shift-library", bn.moments, (x(), AXES), {"shift": "torch"}, TypeError, "shift", "torch array but x is a numpy array"),
    # weighted_moments
    case("wm-weights-None", bn.weighted_moments, (x(), AXES, None), {}, TypeError, "frequency_weights", "must be an array"),
    case("wm-weights-complex", bn.weighted_moments, (x(), AXES, np.ones(C, np.complex64)), {}, TypeError, "frequency_weights", "real floating, integer or bool"),
    case("wm-weights-shape", bn.weighted_moments, (x(), AXES, np.ones(3, np.float32)), {}, ValueError, "frequency_weights", r"broadcast to shape \(4, 3, 2, 5\)"),
    case("wm-weights-masked", bn.weighted_moments, (x(), AXES, masked(channel())), {}, TypeError, "frequency_weights", "plain dense array"),
    case("wm-x-unknown-chunks", bn.weighted_moments, ("dask-unknown", AXES, "dask-weights"), {}, ValueError, "x", "unknown length along axis 0"),
    case("wm-axes-str", bn.weighted_moments, (x(), "0", channel()), {}, TypeError, "axes", "an int or a sequence"),
    # batch_normalization
    case("bnz-mean-None", bn.batch_normalization, (x(), None, F32.copy(), None, None, 1e-3), {}, TypeError, "mean", "an array or a number"),
    case("bnz-variance-str", bn.batch_normalization, (x(), F32.copy(), "one", None, None, 1e-3), {}, TypeError, "variance", "must be an array"),
    case("bnz-epsilon-negative", bn.batch_normalization, (x(), F32.copy(), F32.copy(), None, None, -1.0), {}, ValueError, "variance_epsilon", "a finite number >= 0.0"),
    case("bnz-epsilon-huge", bn.batch_normalization, (x(), F32.copy(), F32.copy(), None, None, 10**400), {}, ValueError, "variance_epsilon", "a finite number >= 0.0"),
    case("bnz-offset-dtype", bn.batch_normalization, (x(), F32.copy(), F32.copy(), channel(0.0, np.float64), None, 1e-3), {}, TypeError, "offset", "has dtype float64 but mean has float32"),
    case("bnz-scale-int", bn.batch_normalization, (x(), F32.copy(), F32.copy(), None, channel(1, np.int32), 1e-3), {}, TypeError, "scale", "real floating dtype"),
    case("bnz-mean-shape", bn.batch_normalization, (x(), channel(size=7), F32.copy(), None, None, 1e-3), {}, ValueError, "mean", "must broadcast to shape"),
    case("bnz-scale-masked", bn.batch_normalization, (x(), F32.copy(), F32.copy(), None, masked(channel()), 1e-3), {}, TypeError, "scale", "plain dense array"),
    # fused_batch_norm
    case("fbn-x-rank", bn.fused_batch_norm, (X[0].copy(), F32.copy(), F32.copy()), {}, ValueError, "x", "must have rank 4 for data_format 'NHWC'"),
    case("fbn-x-float64", bn.fused_batch_norm, (X.astype(np.float64), F32.copy(), F32.copy()), {}, TypeError, "x", "float16 or bfloat16 or float32"),
    case("fbn-scale-None", bn.fused_batch_norm, (x(), None, F32.copy()), {}, TypeError, "scale", r"float32 array of shape \(5,\)"),
    case("fbn-scale-float64", bn.fused_batch_norm, (x(), channel(dtype=np.float64), F32.copy()), {}, TypeError, "scale", "dtype float32"),
    case("fbn-offset-shape", bn.fused_batch_norm, (x(), F32.copy(), channel(size=3)), {}, ValueError, "offset", r"shape \(5,\) \(one value per channel"),
    case("fbn-inference-no-stats", bn.fused_batch_norm, (x(), F32.copy(), F32.copy()), {"is_training": False}, ValueError, "mean and variance", "must be given when is_training is False"),
    case("fbn-factor", bn.fused_batch_norm, (x(), F32.copy(), F32.copy()), {"exponential_avg_factor": 2.0}, ValueError, "exponential_avg_factor", r"in \[0.0, 1.0\]"),
    case("fbn-data-format", bn.fused_batch_norm, (x(), F32.copy(), F32.copy()), {"data_format": "NCW"}, ValueError, "data_format", "must be one of"),
    case("fbn-epsilon-str", bn.fused_batch_norm, (x(), F32.copy(), F32.copy()), {"epsilon": "0.1"}, TypeError, "epsilon", "must be a real number"),
    case("fbn-mean-masked", bn.fused_batch_norm, (x(), F32.copy(), F32.copy(), masked(channel()), F32.copy()), {}, TypeError, "mean", "plain dense array"),
    # fused_batch_norm_grad
    case("fbng-dy-None", bn.fused_batch_norm_grad, (None, x(), F32.copy(), F32.copy(), F32.copy()), {}, TypeError, "dy", "must be an array"),
    case("fbng-dy-shape", bn.fused_batch_norm_grad, (X[:2].copy(), x(), F32.copy(), F32.copy(), F32.copy()), {}, ValueError, "dy", "must have x's shape"),
    case("fbng-dy-dtype", bn.fused_batch_norm_grad, (X.astype(np.float16), x(), F32.copy(), F32.copy(), F32.copy()), {}, TypeError, "dy", "must have x's dtype float32"),
    case("fbng-variance-float16", bn.fused_batch_norm_grad, (x(), x(), F32.copy(), F32.copy(), channel(dtype=np.float16)), {}, TypeError, "variance", "dtype float32"),
    case("fbng-mean-shape", bn.fused_batch_norm_grad, (x(), x(), F32.copy(), channel(size=2), F32.copy()), {}, ValueError, "mean", r"shape \(5,\)"),
    case("fbng-is-training", bn.fused_batch_norm_grad, (x(), x(), F32.copy(), F32.copy(), F32.copy()), {"is_training": "yes"}, TypeError, "is_training", "Python bool"),
    case("fbng-scale-None", bn.fused_batch_norm_grad, (x(), x(), None, F32.copy(), F32.copy()), {}, TypeError, "scale", "must be an array"),
    # batch_norm: x and options
    case("bn-x-None", bn.batch_norm, (None,), {}, TypeError, "x", "must be an array"),
    case("bn-x-sparse", bn.batch_norm, (None,), {"sparse": True}, TypeError, "x", r"dense \(strided\) tensor, got layout"),
    case("bn-x-masked", bn.batch_norm, (masked(x()),), {}, TypeError, "x", "plain dense array"),
    case("bn-x-rank1", bn.batch_norm, (X[0, 0, 0].copy(),), {}, ValueError, "x", "must have rank 2, 3, 4, 5"),
    case("bn-decay-huge", bn.batch_norm, (x(),), {"decay": 10**400}, ValueError, "decay", r"in \[0.0, 1.0\]"),
    case("bn-epsilon-negative", bn.batch_norm, (x(),), {"epsilon": -0.1}, ValueError, "epsilon", "a finite number >= 0.0"),
    case("bn-epsilon-nan", bn.batch_norm, (x(),), {"epsilon": math.nan}, ValueError, "epsilon", "a finite number >= 0.0"),
    case("bn-rmin-inf", bn.batch_norm, (x(),), {"renorm": True, "renorm_clipping": {"rmin": math.inf}}, ValueError, r"renorm_clipping\['rmin'\]", "a finite number or -inf"),
    case("bn-rmax-str", bn.batch_norm, (x(),), {"renorm": True, "renorm_clipping": {"rmax": "2"}}, TypeError, r"renorm_clipping\['rmax'\]", "a real number"),
    case("bn-dmax-negative", bn.batch_norm, (x(),), {"renorm": True, "renorm_clipping": {"dmax": -1.0}}, ValueError, r"renorm_clipping\['dmax'\]", ">= 0.0 or inf"),
    case("bn-weights-complex", bn.batch_norm, (x(),), {"batch_weights": np.ones(4, np.complex64)}, TypeError, "batch_weights", "real floating, integer or bool"),
    case("bn-weights-masked", bn.batch_norm, (x(),), {"batch_weights": masked(np.ones(4, np.float32))}, TypeError, "batch_weights", "plain dense array"),
    case("bn-weights-shape", bn.batch_norm, (x(),), {"batch_weights": np.ones(3, np.float32)}, ValueError, "batch_weights", r"shape \(4,\) \(one weight per sample"),
    case("bn-skip-nonfinite", bn.batch_norm, (x(),), {"skip_nonfinite": "yes"}, TypeError, "skip_nonfinite", "Python bool"),
    case("bn-init-masked", bn.batch_norm, (x(),), {"param_initializers": {"gamma": masked(channel())}}, TypeError, r"param_initializers\['gamma'\]", "plain dense array"),
    case("bn-activation", bn.batch_norm, (x(),), {"activation_fn": 3}, TypeError, "activation_fn", "a callable or None"),
    # batch_norm: the given state
    case("state-dict", bn.batch_norm, (x(), {"moving_mean": F32.copy()}), {}, TypeError, "state", "a BatchNormState or None"),
    case("state-masked-field", bn.batch_norm, (x(), "masked-moving-mean"), {}, TypeError, r"state\.moving_mean", "plain dense array"),
    case("state-dtype", bn.batch_norm, (x(), "float64-moving-variance"), {}, TypeError, r"state\.moving_variance", "must have dtype float32"),
    case("state-shape", bn.batch_norm, (x(), "short-moving-mean"), {}, ValueError, r"state\.moving_mean", r"must have shape \(5,\)"),
    case("state-library", bn.batch_norm, (x(), "torch-state"), {}, TypeError, r"state\.beta", "torch array but x is a numpy array"),
    case("state-local-step-shape", bn.batch_norm, (x(), "vector-local-step"), {"zero_debias_moving_mean": True}, ValueError, r"state\.local_step", r"must have shape \(\)"),
    case("state-without-counter", bn.batch_norm, (x(), "plain-state"), {"skip_nonfinite": True}, ValueError, "state", "needs the fields .*skipped_steps"),
    case("state-counter-dtype", bn.batch_norm, (x(), "float-counter"), {"skip_nonfinite": True}, TypeError, r"state\.skipped_steps", "must have dtype int32"),
    case("state-and-initializers", bn.batch_norm, (x(), "plain-state"), {"param_initializers": {"beta": 1.0}}, ValueError, "param_initializers", "only used to create the state"),
    # batch_norm_vjp and its vjp
    case("vjp-activation", bn.batch_norm_vjp, (x(),), {"activation_fn": abs}, ValueError, "activation_fn", "must be None for batch_norm_vjp"),
    case("vjp-x-int", bn.batch_norm_vjp, (X.astype(np.int64),), {}, TypeError, "x", "real floating dtype"),
    case("vjp-x-masked", bn.batch_norm_vjp, (masked(x()),), {}, TypeError, "x", "plain dense array"),
    case("vjp-dy-None", "vjp", (None,), {}, TypeError, "dy", "must be an array"),
    case("vjp-dy-shape", "vjp", (X[:, :2].copy(),), {}, ValueError, "dy", r"must have x's shape \(4, 3, 2, 5\)"),
    case("vjp-dy-dtype", "vjp", (X.astype(np.float64),), {}, TypeError, "dy", "must have x's dtype float32"),
    case("vjp-dy-library", "vjp", ("torch",), {}, TypeError, "dy", "torch array but x is a numpy array"),
    case("vjp-dy-masked", "vjp", (masked(x()),), {}, TypeError, "dy", "plain dense array"),
]


def _resolve(value):
    """Placeholders for inputs that need an optional library or a prepared state."""
    if not isinstance(value, str):
        return value
    plain = state()
    makers = {
        "torch": lambda: torch_dense(channel()),
        "dask-unknown": lambda: dask_unknown_chunks(x()),
        "dask-weights": lambda: pytest.importorskip("dask.array").from_array(channel()),
        "masked-moving-mean": lambda: plain._replace(moving_mean=masked(channel(0.0))),
        "float64-moving-variance": lambda: plain._replace(moving_variance=channel(dtype=np.float64)),
        "short-moving-mean": lambda: plain._replace(moving_mean=channel(size=4)),
        "torch-state": lambda: bn.BatchNormState(*(None if v is None else torch_dense(v) for v in plain)),
        "vector-local-step": lambda: state(zero_debias_moving_mean=True)._replace(local_step=channel(0.0)),
        "plain-state": lambda: plain,
        "float-counter": lambda: state(skip_nonfinite=True)._replace(skipped_steps=np.zeros((), np.float32)),
    }
    return makers[value]() if value in makers else value


def _arrays(value, found):
    """Every array reachable from an argument (states, dicts and sequences searched)."""
    if isinstance(value, bn.BatchNormState):
        for field in value:
            _arrays(field, found)
    elif isinstance(value, dict):
        for item in value.values():
            _arrays(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _arrays(item, found)
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        found.append(value)
    return found


def _snapshot(array):
    if isinstance(array, np.ma.MaskedArray):
        return ("masked", array.data.copy(), array.mask.copy())
    if type(array).__module__.startswith("torch"):
        dense = array.to_dense() if array.layout != __import__("torch").strided else array
        return ("torch", dense.detach().clone().numpy(), str(array.layout))
    if type(array).__module__.startswith("dask"):
        return ("dask", array.name)
    return ("numpy", np.array(array, copy=True))


def _same(before, array):
    after = _snapshot(array)
    assert before[0] == after[0]
    for old, new in zip(before[1:], after[1:]):
        if isinstance(old, np.ndarray):
            assert old.dtype == new.dtype and old.shape == new.shape
            np.testing.assert_array_equal(new, old)
        else:
            assert old == new


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_refused_naming_the_argument_and_changes_nothing(bad):
    kwargs = dict(bad.kwargs)
    args = [_resolve(value) for value in bad.args]
    if kwargs.pop("sparse", False):
        args[0] = torch_sparse(x())
    kwargs = {name: _resolve(value) for name, value in kwargs.items()}
    call = vjp_of() if bad.call == "vjp" else bad.call
    given = _arrays((args, kwargs), [])
    before = [_snapshot(array) for array in given]
    with pytest.raises(bad.error) as raised:
        call(*args, **kwargs)
    message = str(raised.value)
    assert re.search(bad.names, message), f"{message!r} does not name {bad.names!r}"
    assert re.search(bad.expects, message), f"{message!r} does not say {bad.expects!r}"
    for snapshot, array in zip(before, given):
        _same(snapshot, array)


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    "dtype",
    [np.float32, np.dtype("float32"), "torch.float32", "array_api_strict.float32"],
    ids=["scalar-type", "numpy-dtype", "torch", "array-api-strict"],
)
def test_dtype_names_in_messages_are_plain(dtype):
    from bn_portable._lib._dtypes import dtype_name

    if dtype == "torch.float32":
        dtype = pytest.importorskip("torch").float32
    elif dtype == "array_api_strict.float32":
        dtype = pytest.importorskip("array_api_strict").float32
    assert dtype_name(dtype) == "float32"

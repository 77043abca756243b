"""Declarative catalogue of the TensorFlow conformance cases (standard library only).

Every case is a JSON-serialisable dict; ``cases()`` returns them in a fixed
order.  The catalogue says *what* to run and *how to generate the inputs*; the
generator (``conformance/generate.py``, TensorFlow environment) turns each case
into golden arrays, and the runner replays the stored inputs through
bn_portable.  Nothing here imports numpy or TensorFlow.

Case fields
-----------
``id``            unique, stable, ``[A-Za-z0-9_.=/-]`` only.
``group``         feature group for the report matrix (see ``GROUPS``).
``op``            ``batch_normalization``, ``moments``, ``weighted_moments``,
                  ``fused_batch_norm``, ``batch_norm``, ``fused_batch_norm_grad``
                  or ``batch_norm_grad``.
``dtype``         dtype of the input ``x``.
``param_dtype``   dtype of the parameter arrays where it differs from ``dtype``
                  (batch_normalization's mean/variance/offset/scale,
                  weighted_moments' frequency_weights, fused ops' float32
                  scale/offset/mean/variance).
``kwargs``        keyword arguments of the bn_portable call, named as in the
                  public API; arrays are never in kwargs.  For batch_norm,
                  ``"weighted": true`` means ``batch_weights`` is passed and
                  ``"activation_fn": "relu"`` means ``activation_fn=relu``.
``data``          ``{"seed": int, "arrays": {name: spec}}``: how every input
                  array is generated (see ``ARRAY_SPEC_DOC``).  The goldens
                  store the generated arrays too, so a runner needs no RNG.
``steps``         batch_norm only: one dict per call on the same layer
                  variables, ``{"is_training": bool}``; step k reads
                  ``step{k}/x`` (and ``step{k}/batch_weights``).
``init``          batch_norm and batch_norm_grad: the names among beta, gamma,
                  moving_mean, moving_variance whose initial value is given
                  (array ``init/<name>``, ``param_initializers`` in the call).
``expect_error``  optional, ``true``: TensorFlow itself raises for this
                  configuration; the goldens record the exception.
``truth``         optional, ``"float64"``: the generator also runs TensorFlow
                  on the inputs cast to float64 and stores every output again
                  as ``truth/<name>``; where TensorFlow's own result is further
                  from that truth than the tolerance, the case is judged
                  against the truth (``conformance/runner.py``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re

__all__ = [
    "ARRAY_SPEC_DOC",
    "GROUPS",
    "OPS",
    "canonical_json",
    "case_sha256",
    "cases",
    "predict_tf_path",
]

OPS = (
    "batch_normalization",
    "moments",
    "weighted_moments",
    "fused_batch_norm",
    "batch_norm",
    "fused_batch_norm_grad",
    "batch_norm_grad",
)

GROUPS = (
    "moments",
    "weighted_moments",
    "batch_normalization",
    "fused_batch_norm",
    "fused_batch_norm:edge",
    "fused_batch_norm:large",
    "batch_norm:fused",
    "batch_norm:layer",
    "batch_norm:weighted",
    "batch_norm:zero_debias",
    "batch_norm:renorm",
    "batch_norm:hyper",
    "batch_norm:edge",
    "errors",
    "grad:fused_batch_norm",
    "grad:batch_norm",
    "ill_conditioned:moments",
    "ill_conditioned:weighted_moments",
    "ill_conditioned:fused_batch_norm",
    "ill_conditioned:batch_norm",
    "ill_conditioned:grad",
)

ARRAY_SPEC_DOC = """\
An array spec is {"shape": [...], "dtype": str, "dist": str, ...parameters}.
The stream of array NAME in a case with seed S is
numpy.random.Generator(PCG64(SeedSequence([S, zlib.crc32(NAME.encode())]))).
Values are drawn in float64, then (1) per-channel modulation if
"channel_axis" is given: x = loc_c + scale_c * z where
loc_c = loc + channel_loc_spread * N(0, 1) and
scale_c = scale * U(channel_scale_range), drawn first from the same stream;
(2) "special": [[flat_index, value], ...] overwrites single elements
(value a number or "nan", "inf", "-inf"); (3) "quantize": dtype rounds through
that dtype; (4) the result is cast to "dtype".
dist: normal(loc, scale) | uniform(low, high) | loguniform(low, high) |
grid(loc, step, kmin, kmax): loc + step * integer k in [kmin, kmax] |
integers(low, high) inclusive | constant(value).
"""

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.=/-]+$")

# Logical batch-norm shapes: (N, spatial dims, C) per rank; channel counts are
# deliberately not powers of two, every channel sees 24 to 120 elements.
_BN_LOGICAL = {
    2: (24, (), 7),
    3: (6, (10,), 5),
    4: (4, (6, 5), 3),
    5: (2, (3, 4, 5), 6),
}

_X_NORMAL = {
    "dist": "normal",
    "loc": 0.5,
    "scale": 2.0,
    "channel_loc_spread": 1.5,
    "channel_scale_range": [0.5, 2.0],
}


# --------------------------------------------------------------------------
# small helpers


def canonical_json(obj) -> str:
    """The canonical JSON text of a case (what ``case_sha256`` hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def case_sha256(case: dict) -> str:
    return hashlib.sha256(canonical_json(case).encode("utf-8")).hexdigest()


def _seed(case_id: str) -> int:
    return int(hashlib.sha256(case_id.encode("utf-8")).hexdigest()[:8], 16)


def _fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _fmt_float(v: float) -> str:
    return repr(float(v))


def _b(v: bool) -> str:
    return "1" if v else "0"


def _spec(shape, dtype, base=None, **params) -> dict:
    spec = {"shape": list(shape), "dtype": dtype}
    if base:
        spec.update(base)
    spec.update(params)
    return spec


def _case(case_id, group, op, dtype, kwargs, arrays, **extra) -> dict:
    case = {
        "id": case_id,
        "group": group,
        "op": op,
        "dtype": dtype,
        "kwargs": kwargs,
        "data": {"seed": _seed(case_id), "arrays": arrays},
    }
    for key, value in extra.items():
        if value is not None and value is not False:
            case[key] = value
    return case


def _layout(rank: int, data_format: str, logical=None):
    """Physical shape and channel axis of a batch-norm input."""
    n, spatial, c = logical if logical is not None else _BN_LOGICAL[rank]
    if data_format in ("NHWC", "NDHWC"):
        return [n, *spatial, c], rank - 1
    return [n, c, *spatial], 1


def _param_storage_dtype(dtype: str) -> str:
    """dtype of init arrays: float64 for float64 layers, float32 otherwise."""
    return "float64" if dtype == "float64" else "float32"


def predict_tf_path(rank, fused, weighted, zero_debias, renorm, dtype) -> str:
    """Which implementation tf_slim.layers.batch_norm (1.1.0) dispatches to.

    ``slim_fused``: tf-slim's own ``_fused_batch_norm`` (ranks 2 and 4);
    ``keras_fused`` / ``keras_layer``: the tf-keras V1 BatchNormalization
    layer with / without the fused kernel; ``legacy``: tf-slim's
    moments + batch_normalization code (batch_weights or zero-debias).
    """
    possible_to_fuse = not weighted and not renorm and rank in (2, 4)
    if fused and possible_to_fuse and (zero_debias or rank == 2):
        return "slim_fused"
    if not weighted and not zero_debias:
        if fused and rank in (4, 5) and not renorm and dtype != "float64":
            return "keras_fused"
        return "keras_layer"
    return "legacy"


def _bn_expected_error(path, dtype, weighted, zero_debias, renorm) -> bool:
    if renorm and (weighted or zero_debias):
        return True  # ValueError: renorm is not supported with batch_weights...
    if renorm and dtype == "float64":
        return True  # TypeError in tf-keras: Maximum(float64, float32 sqrt(eps))
    # TypeError: FusedBatchNormV3 has no float64 kernel
    return path == "slim_fused" and dtype == "float64"


# --------------------------------------------------------------------------
# primitives


def _moments_cases():
    out = []
    configs = [
        ((12, 7), [0]),
        ((4, 6, 5), [0, 1]),
        ((4, 6, 5), [1]),
        ((3, 5, 4, 6), [0, 2, 3]),
        ((3, 4, 6, 5), [0, 1, 2]),
        ((6, 5, 8), [0, -1]),
        ((4, 6, 5), [0, 1, 2]),
    ]
    x_base = {"dist": "normal", "loc": 1.5, "scale": 2.0}
    for dtype, (shape, axes), keepdims in itertools.product(
        ("float16", "float32", "float64"), configs, (False, True)
    ):
        cid = (
            f"moments/{dtype}/{_fmt_shape(shape)}/axes={'.'.join(map(str, axes))}"
            f"/keepdims={_b(keepdims)}/normal"
        )
        out.append(
            _case(
                cid,
                "moments",
                "moments",
                dtype,
                {"axes": axes, "keepdims": keepdims},
                {"x": _spec(shape, dtype, x_base)},
            )
        )
    # Large mean, small spread, on a coarse binary grid: every sum TF forms is
    # exact (power-of-two counts), so the two-pass result is exact and a
    # one-pass E[x^2]-E[x]^2 implementation is visibly wrong.
    grids = {
        "float16": {"dist": "grid", "loc": 256.0, "step": 0.25, "kmin": -4, "kmax": 4},
        "float32": {"dist": "grid", "loc": 1000.0, "step": 0.125, "kmin": -4, "kmax": 4},
        "float64": {"dist": "grid", "loc": 1.0e8, "step": 0.125, "kmin": -4, "kmax": 4},
    }
    grid_configs = [
        ((64, 5), [0], False),
        ((4, 8, 2, 3), [0, 1, 2], False),
        ((3, 4, 4, 4), [1, 2, 3], True),
    ]
    for dtype, (shape, axes, keepdims) in itertools.product(
        ("float16", "float32", "float64"), grid_configs
    ):
        cid = (
            f"moments/{dtype}/{_fmt_shape(shape)}/axes={'.'.join(map(str, axes))}"
            f"/keepdims={_b(keepdims)}/large_mean_grid"
        )
        out.append(
            _case(
                cid,
                "moments",
                "moments",
                dtype,
                {"axes": axes, "keepdims": keepdims},
                {"x": _spec(shape, dtype, grids[dtype])},
            )
        )
    # Non-finite inputs: (6, 5) reduced over axis 0; column 2 holds a NaN,
    # column 3 a +Inf, column 1 both +Inf and -Inf.
    specials = {
        "nan": [[7, "nan"]],
        "inf": [[3, "inf"]],
        "inf_neginf": [[1, "inf"], [6, "-inf"]],
    }
    for dtype, (name, special) in itertools.product(
        ("float16", "float32", "float64"), specials.items()
    ):
        cid = f"moments/{dtype}/6x5/axes=0/keepdims=0/{name}"
        out.append(
            _case(
                cid,
                "moments",
                "moments",
                dtype,
                {"axes": [0], "keepdims": False},
                {"x": _spec((6, 5), dtype, x_base, special=special)},
            )
        )
    for shape, axes in (((12, 7), [0]), ((3, 5, 4, 6), [0, 2, 3])):
        cid = (
            f"moments/bfloat16/{_fmt_shape(shape)}/axes={'.'.join(map(str, axes))}"
            f"/keepdims=0/normal"
        )
        out.append(
            _case(
                cid,
                "moments",
                "moments",
                "bfloat16",
                {"axes": axes, "keepdims": False},
                {"x": _spec(shape, "bfloat16", x_base)},
            )
        )
    return out


def _weighted_moments_cases():
    out = []
    x_base = {"dist": "normal", "loc": 1.0, "scale": 2.0}
    w_base = {"dist": "uniform", "low": 0.0, "high": 2.0}
    configs = {
        "2d": ((10, 6), [0], {"full": (10, 6), "batch": (10, 1), "channel": (6,)}),
        "3d": ((4, 5, 3), [0, 1], {"full": (4, 5, 3), "batch": (4, 1, 1), "channel": (3,)}),
        "nchw": (
            (3, 4, 5, 2),
            [0, 2, 3],
            {"full": (3, 4, 5, 2), "batch": (3, 1, 1, 1), "channel": (1, 4, 1, 1)},
        ),
    }
    for (cname, (xshape, axes, wshapes)), wkind, dtype, keepdims in itertools.product(
        configs.items(),
        ("full", "batch", "channel"),
        ("float16", "float32", "float64"),
        (False, True),
    ):
        cid = (
            f"weighted_moments/{dtype}/{cname}/{_fmt_shape(xshape)}/w={wkind}"
            f"/keepdims={_b(keepdims)}"
        )
        out.append(
            _case(
                cid,
                "weighted_moments",
                "weighted_moments",
                dtype,
                {"axes": axes, "keepdims": keepdims},
                {
                    "x": _spec(xshape, dtype, x_base),
                    "frequency_weights": _spec(wshapes[wkind], dtype, w_base),
                },
            )
        )
    # Zero total weight: TF divides with div_no_nan and returns 0, not NaN.
    for dtype in ("float16", "float32", "float64"):
        cid = f"weighted_moments/{dtype}/2d/10x6/w=zero_total/keepdims=0"
        out.append(
            _case(
                cid,
                "weighted_moments",
                "weighted_moments",
                dtype,
                {"axes": [0], "keepdims": False},
                {
                    "x": _spec((10, 6), dtype, x_base),
                    "frequency_weights": _spec((10, 6), dtype, {"dist": "constant", "value": 0.0}),
                },
            )
        )
    cid = "weighted_moments/float32/2d/10x6/w=channel_one_zero/keepdims=0"
    out.append(
        _case(
            cid,
            "weighted_moments",
            "weighted_moments",
            "float32",
            {"axes": [0], "keepdims": False},
            {
                "x": _spec((10, 6), "float32", x_base),
                "frequency_weights": _spec((6,), "float32", w_base, special=[[2, 0.0]]),
            },
        )
    )
    # Integer-valued frequency weights (including zeros).
    for cname in ("2d", "nchw"):
        xshape, axes, wshapes = configs[cname]
        cid = f"weighted_moments/float32/{cname}/{_fmt_shape(xshape)}/w=integer_valued/keepdims=0"
        out.append(
            _case(
                cid,
                "weighted_moments",
                "weighted_moments",
                "float32",
                {"axes": axes, "keepdims": False},
                {
                    "x": _spec(xshape, "float32", x_base),
                    "frequency_weights": _spec(
                        wshapes["full"], "float32", {"dist": "integers", "low": 0, "high": 3}
                    ),
                },
            )
        )
    # Weights of another dtype than x: TF casts them to x's (computation) dtype.
    mixed = [
        ("float32", "float64"),
        ("float16", "float32"),
        ("float32", "float16"),
        ("float64", "float32"),
        ("float32", "int32"),
    ]
    for dtype, wdtype in mixed:
        xshape, axes, wshapes = configs["3d"]
        wb = {"dist": "integers", "low": 0, "high": 4} if wdtype == "int32" else w_base
        cid = f"weighted_moments/{dtype}/3d/{_fmt_shape(xshape)}/w=full/weights_{wdtype}/keepdims=0"
        out.append(
            _case(
                cid,
                "weighted_moments",
                "weighted_moments",
                dtype,
                {"axes": axes, "keepdims": False},
                {
                    "x": _spec(xshape, dtype, x_base),
                    "frequency_weights": _spec(wshapes["full"], wdtype, wb),
                },
                param_dtype=wdtype,
            )
        )
    return out


def _batch_normalization_cases():
    out = []
    shapes = {
        "2d": ((12, 7), (7,)),
        "nchw": ((3, 5, 4, 4), (1, 5, 1, 1)),
        "nhwc": ((2, 4, 3, 6), (6,)),
    }
    dtype_pairs = [
        ("float32", "float32"),
        ("float16", "float16"),
        ("float16", "float32"),
        ("bfloat16", "float32"),
        ("float32", "float64"),
        ("float64", "float64"),
    ]
    presence = [(True, True), (True, False), (False, True), (False, False)]

    def make(cid, xshape, pshape, dtype, pdtype, with_offset, with_scale, eps):
        arrays = {
            "x": _spec(xshape, dtype, {"dist": "normal", "loc": 1.0, "scale": 2.0}),
            "mean": _spec(pshape, pdtype, {"dist": "normal", "loc": 1.0, "scale": 0.5}),
            "variance": _spec(pshape, pdtype, {"dist": "uniform", "low": 0.2, "high": 3.0}),
        }
        if with_offset:
            arrays["offset"] = _spec(pshape, pdtype, {"dist": "normal", "loc": 0.0, "scale": 1.0})
        if with_scale:
            arrays["scale"] = _spec(pshape, pdtype, {"dist": "uniform", "low": 0.5, "high": 1.5})
        return _case(
            cid,
            "batch_normalization",
            "batch_normalization",
            dtype,
            {"variance_epsilon": eps},
            arrays,
            param_dtype=pdtype if pdtype != dtype else None,
        )

    for (sname, (xshape, pshape)), (with_offset, with_scale), (dtype, pdtype) in itertools.product(
        shapes.items(), presence, dtype_pairs
    ):
        cid = (
            f"batch_normalization/{sname}/{dtype}/params_{pdtype}"
            f"/offset={_b(with_offset)}/scale={_b(with_scale)}/eps=0.001"
        )
        out.append(make(cid, xshape, pshape, dtype, pdtype, with_offset, with_scale, 0.001))
    for eps, (dtype, pdtype) in itertools.product((1e-5, 0.1), dtype_pairs):
        xshape, pshape = shapes["2d"]
        cid = (
            f"batch_normalization/2d/{dtype}/params_{pdtype}/offset=1/scale=1/eps={_fmt_float(eps)}"
        )
        out.append(make(cid, xshape, pshape, dtype, pdtype, True, True, eps))
    return out


# --------------------------------------------------------------------------
# fused_batch_norm (the raw fused op)

_FBN_SHAPES = {
    "NHWC": [3, 4, 5, 6],
    "NCHW": [3, 5, 4, 6],
    "NDHWC": [2, 3, 4, 3, 5],
    "NCDHW": [2, 3, 4, 3, 5],
}


def _channel_axis(data_format: str, rank: int) -> int:
    return 1 if data_format in ("NCHW", "NCDHW") else rank - 1


def _fbn_arrays(shape, data_format, dtype, with_stats, x_base=None):
    rank = len(shape)
    axis = _channel_axis(data_format, rank)
    c = shape[axis]
    xb = dict(x_base if x_base is not None else _X_NORMAL)
    if xb.get("dist") == "normal" and "channel_loc_spread" in xb:
        xb["channel_axis"] = axis
    arrays = {
        "x": _spec(shape, dtype, xb),
        "scale": _spec([c], "float32", {"dist": "uniform", "low": 0.5, "high": 1.5}),
        "offset": _spec([c], "float32", {"dist": "normal", "loc": 0.0, "scale": 0.5}),
    }
    if with_stats:
        arrays["mean"] = _spec([c], "float32", {"dist": "normal", "loc": 0.5, "scale": 1.0})
        arrays["variance"] = _spec([c], "float32", {"dist": "uniform", "low": 0.5, "high": 3.0})
    return arrays


_FBN_MODES = {
    # name: (is_training, exponential_avg_factor, mean/variance given)
    "train": (True, 1.0, False),
    "train_with_stats": (True, 1.0, True),
    "train_avg0.3": (True, 0.3, True),
    "inference": (False, 1.0, True),
}


def _fused_batch_norm_cases():
    out = []
    for data_format, dtype, (mode, (is_training, factor, with_stats)), eps in itertools.product(
        _FBN_SHAPES, ("float16", "bfloat16", "float32"), _FBN_MODES.items(), (0.001, 1e-7)
    ):
        shape = _FBN_SHAPES[data_format]
        cid = f"fused_batch_norm/{data_format}/{dtype}/{mode}/eps={_fmt_float(eps)}"
        out.append(
            _case(
                cid,
                "fused_batch_norm",
                "fused_batch_norm",
                dtype,
                {
                    "epsilon": eps,
                    "data_format": data_format,
                    "is_training": is_training,
                    "exponential_avg_factor": factor,
                },
                _fbn_arrays(shape, data_format, dtype, with_stats),
                param_dtype="float32" if dtype != "float32" else None,
            )
        )
    # Edge cases.
    edge = []
    # one element per channel: variance 0 (max(n-1, 1) guard), y = offset
    for shape, data_format, dtype, mode in (
        ([1, 1, 1, 5], "NHWC", "float32", "train"),
        ([1, 1, 1, 5], "NHWC", "float32", "train_avg0.3"),
        ([1, 5, 1, 1], "NCHW", "float32", "train"),
        ([1, 1, 1, 5], "NHWC", "float16", "train"),
        ([1, 1, 1, 5], "NHWC", "float32", "inference"),
    ):
        edge.append(("n1", shape, data_format, dtype, mode, 0.001, None))
    # empty batch
    for shape, data_format, dtype, mode in (
        ([0, 2, 2, 3], "NHWC", "float32", "train"),
        ([0, 2, 2, 3], "NHWC", "float32", "train_avg0.3"),
        ([0, 2, 2, 3], "NHWC", "float32", "inference"),
        ([0, 2, 2, 3], "NHWC", "float16", "train"),
        ([0, 3, 2, 2, 2], "NCDHW", "float32", "train"),
    ):
        edge.append(("empty_batch", shape, data_format, dtype, mode, 0.001, None))
    # tiny epsilon with tiny variance: a floor on epsilon would show at once
    tiny = {
        "dist": "normal",
        "loc": 0.5,
        "scale": 1e-3,
        "channel_loc_spread": 0.0,
        "channel_scale_range": [0.5, 2.0],
    }
    for mode in ("train", "inference"):
        edge.append(("tiny_variance", [3, 4, 5, 6], "NHWC", "float32", mode, 1e-7, tiny))
    # large mean, small spread on an exact grid (64 elements per channel)
    grid = {"dist": "grid", "loc": 1000.0, "step": 0.125, "kmin": -4, "kmax": 4}
    edge.append(("large_mean_grid", [4, 4, 4, 3], "NHWC", "float32", "train", 0.001, grid))
    edge.append(("large_mean_grid", [4, 3, 4, 4], "NCHW", "float32", "train", 0.001, grid))
    # a NaN in one channel
    nan_x = dict(_X_NORMAL, special=[[5, "nan"]])
    edge.append(("nan_input", [3, 4, 5, 6], "NHWC", "float32", "train", 0.001, nan_x))
    for name, shape, data_format, dtype, mode, eps, x_base in edge:
        is_training, factor, with_stats = _FBN_MODES[mode]
        cid = (
            f"fused_batch_norm/edge/{name}/{_fmt_shape(shape)}/{data_format}/{dtype}/{mode}"
            f"/eps={_fmt_float(eps)}"
        )
        arrays = _fbn_arrays(shape, data_format, dtype, with_stats, x_base)
        if name == "tiny_variance" and with_stats:
            arrays["variance"] = _spec(
                [shape[-1]], "float32", {"dist": "uniform", "low": 1e-7, "high": 4e-6}
            )
        out.append(
            _case(
                cid,
                "fused_batch_norm:edge",
                "fused_batch_norm",
                dtype,
                {
                    "epsilon": eps,
                    "data_format": data_format,
                    "is_training": is_training,
                    "exponential_avg_factor": factor,
                },
                arrays,
                param_dtype="float32" if dtype != "float32" else None,
            )
        )
    return out


def _fused_batch_norm_large_cases():
    """Inputs of 2¹⁶ values: large enough for every library's fast path.

    The other cases are small, and the NumPy fast paths hand inputs under
    2¹⁶ values back to the generic kernels; these make ``numpy`` and
    ``numpy-generic`` run different code (blocked passes, BLAS sums) on the
    same golden. 4 096 values per channel also give the reductions long runs
    to add (NHWC: 4 096 rows).
    """
    out = []
    for data_format, shape in (("NHWC", [4, 32, 32, 16]), ("NCHW", [4, 16, 32, 32])):
        for mode in ("train", "inference"):
            is_training, factor, with_stats = _FBN_MODES[mode]
            cid = f"fused_batch_norm/large/{_fmt_shape(shape)}/{data_format}/float32/{mode}"
            out.append(
                _case(
                    cid,
                    "fused_batch_norm:large",
                    "fused_batch_norm",
                    "float32",
                    {
                        "epsilon": 0.001,
                        "data_format": data_format,
                        "is_training": is_training,
                        "exponential_avg_factor": factor,
                    },
                    _fbn_arrays(shape, data_format, "float32", with_stats),
                )
            )
    return out


# --------------------------------------------------------------------------
# tf_slim.layers.batch_norm

_RENORM_VARIANTS = {
    # name: (renorm_clipping, renorm_decay, init statistics far from the batch)
    "noclip": (None, 0.99, True),
    "clip_active": ({"rmin": 0.5, "rmax": 2.0, "dmax": 1.0}, 0.99, True),
    "clip_active_rdecay0.5": ({"rmin": 0.5, "rmax": 2.0, "dmax": 1.0}, 0.5, True),
    "clip_rmax_only": ({"rmax": 1.5}, 0.9, True),
    "clip_rmin_dmax": ({"rmin": 0.8, "dmax": 0.25}, 0.99, True),
    "clip_inactive": ({"rmin": 0.01, "rmax": 100.0, "dmax": 100.0}, 0.99, False),
}

_PATH_REPS = {
    # name: (rank, data_format, fused, mode) reaching one tf_slim path each
    "slimfused_r2": (2, "NHWC", True, "plain"),
    "kerasfused_r4": (4, "NHWC", True, "plain"),
    "layer_r4nchw": (4, "NCHW", False, "plain"),
    "legacy_weighted_r3": (3, "NHWC", False, "weighted"),
}


def _init_specs(dtype, names, renorm_far=None):
    """Arrays init/<name> for param_initializers (float16 cases: values exact in float16)."""
    quant = {"quantize": "float16"} if dtype == "float16" else {}
    bases = {
        "beta": {"dist": "normal", "loc": 0.0, "scale": 0.5},
        "gamma": {"dist": "uniform", "low": 0.5, "high": 1.5},
        "moving_mean": {"dist": "normal", "loc": 0.5, "scale": 1.0},
        "moving_variance": {"dist": "uniform", "low": 0.5, "high": 3.0},
    }
    if renorm_far is True:
        # renorm_mean / renorm_stddev start from these: far from every batch,
        # so r and d hit their clipping bounds on both sides from step 0.
        bases["moving_mean"] = {"dist": "normal", "loc": 6.0, "scale": 1.0}
        bases["moving_variance"] = {"dist": "loguniform", "low": 1e-2, "high": 1e2}
    elif renorm_far is False:
        bases["moving_mean"] = {"dist": "normal", "loc": 0.5, "scale": 0.3}
        bases["moving_variance"] = {"dist": "uniform", "low": 2.0, "high": 6.0}
    return {name: dict(bases[name], **quant) for name in names}


def _bn_case(
    case_id,
    group,
    op,
    dtype,
    rank,
    data_format,
    *,
    fused,
    mode="plain",
    center=True,
    scale=True,
    decay=0.9,
    epsilon=0.001,
    activation=None,
    renorm_variant=None,
    steps=None,
    is_training=None,
    init="all",
    logical=None,
    x_base=None,
):
    weighted = mode == "weighted"
    zero_debias = mode == "zero_debias"
    renorm = renorm_variant is not None
    shape, axis = _layout(rank, data_format, logical)
    n = shape[0]
    c = shape[axis]
    kwargs = {
        "decay": decay,
        "center": center,
        "scale": scale,
        "epsilon": epsilon,
        "fused": fused,
        "data_format": data_format,
        "zero_debias_moving_mean": zero_debias,
        "renorm": renorm,
    }
    renorm_far = None
    if renorm:
        clipping, renorm_decay, renorm_far = _RENORM_VARIANTS[renorm_variant]
        kwargs["renorm_clipping"] = clipping
        kwargs["renorm_decay"] = renorm_decay
    if weighted:
        kwargs["weighted"] = True
    if activation:
        kwargs["activation_fn"] = activation
    if init == "all":
        init_names = [
            k
            for k, used in (
                ("beta", center),
                ("gamma", scale),
                ("moving_mean", True),
                ("moving_variance", True),
            )
            if used
        ]
    else:
        init_names = list(init)
    xb = dict(x_base if x_base is not None else _X_NORMAL)
    if "channel_loc_spread" in xb:
        xb["channel_axis"] = axis
    arrays = {}
    w_base = {"dist": "uniform", "low": 0.05, "high": 2.0}
    if op == "batch_norm":
        if steps is None:
            steps = [True, True, True, False]
        for k in range(len(steps)):
            arrays[f"step{k}/x"] = _spec(shape, dtype, xb)
            if weighted:
                arrays[f"step{k}/batch_weights"] = _spec([n], dtype, w_base)
    else:
        arrays["x"] = _spec(shape, dtype, xb)
        arrays["dy"] = _spec(shape, dtype, {"dist": "normal", "loc": 0.0, "scale": 1.0})
        if weighted:
            arrays["batch_weights"] = _spec([n], dtype, w_base)
        kwargs["is_training"] = is_training
    for name, spec in _init_specs(dtype, init_names, renorm_far).items():
        arrays[f"init/{name}"] = _spec([c], _param_storage_dtype(dtype), spec)
    path = predict_tf_path(rank, fused, weighted, zero_debias, renorm, dtype)
    error = _bn_expected_error(path, dtype, weighted, zero_debias, renorm)
    extra = {"init": init_names}
    if op == "batch_norm":
        extra["steps"] = [{"is_training": t} for t in steps]
    if error:
        group = "errors"
        extra["expect_error"] = True
    return _case(case_id, group, op, dtype, kwargs, arrays, **extra)


def _plain_group(rank, fused, dtype):
    path = predict_tf_path(rank, fused, False, False, False, dtype)
    return "batch_norm:fused" if path in ("slim_fused", "keras_fused") else "batch_norm:layer"


_LAYOUTS_ALL = [(r, df) for r in (2, 3, 4, 5) for df in ("NHWC", "NCHW")]
_BN_DTYPES = ("float16", "float32", "float64")


def _batch_norm_cases():
    out = []
    # Core: every path x every rank x both layouts x every dtype.
    for fused, (rank, df), dtype, mode in itertools.product(
        (False, True), _LAYOUTS_ALL, _BN_DTYPES, ("plain", "weighted", "zero_debias")
    ):
        group = {
            "plain": _plain_group(rank, fused, dtype),
            "weighted": "batch_norm:weighted",
            "zero_debias": "batch_norm:zero_debias",
        }[mode]
        cid = f"batch_norm/core/r{rank}/{df}/{dtype}/fused={_b(fused)}/{mode}"
        out.append(_bn_case(cid, group, "batch_norm", dtype, rank, df, fused=fused, mode=mode))
    # Renorm: layouts x dtypes x clipping variants (non-fused request), plus the
    # fused=True request (which tf silently ignores for renorm).
    renorm_layouts = [(2, "NHWC"), (3, "NCHW"), (4, "NHWC"), (4, "NCHW"), (5, "NCHW")]
    for (rank, df), dtype, variant in itertools.product(
        renorm_layouts, _BN_DTYPES, _RENORM_VARIANTS
    ):
        if dtype == "float64" and variant != "clip_active":
            continue  # float64 renorm raises in TF whatever the clipping: one per layout
        cid = f"batch_norm/renorm/r{rank}/{df}/{dtype}/fused=0/{variant}"
        out.append(
            _bn_case(
                cid,
                "batch_norm:renorm",
                "batch_norm",
                dtype,
                rank,
                df,
                fused=False,
                renorm_variant=variant,
            )
        )
    for (rank, df), dtype in itertools.product(renorm_layouts, _BN_DTYPES):
        cid = f"batch_norm/renorm/r{rank}/{df}/{dtype}/fused=1/clip_active"
        out.append(
            _bn_case(
                cid,
                "batch_norm:renorm",
                "batch_norm",
                dtype,
                rank,
                df,
                fused=True,
                renorm_variant="clip_active",
            )
        )
    # Hyper-parameters on one representative of each tf_slim path (float32).
    for rep, (center, scale), decay, eps in itertools.product(
        _PATH_REPS,
        ((True, False), (True, True), (False, True), (False, False)),
        (0.999, 0.9, 0.5),
        (0.001, 1e-5, 0.1),
    ):
        rank, df, fused, mode = _PATH_REPS[rep]
        cid = (
            f"batch_norm/hyper/{rep}/center={_b(center)}/scale={_b(scale)}"
            f"/decay={_fmt_float(decay)}/eps={_fmt_float(eps)}"
        )
        out.append(
            _bn_case(
                cid,
                "batch_norm:hyper",
                "batch_norm",
                "float32",
                rank,
                df,
                fused=fused,
                mode=mode,
                center=center,
                scale=scale,
                decay=decay,
                epsilon=eps,
            )
        )
    # activation_fn=relu on every path and dtype.
    for rep, dtype in itertools.product(_PATH_REPS, _BN_DTYPES):
        rank, df, fused, mode = _PATH_REPS[rep]
        cid = f"batch_norm/relu/{rep}/{dtype}"
        out.append(
            _bn_case(
                cid,
                "batch_norm:hyper",
                "batch_norm",
                dtype,
                rank,
                df,
                fused=fused,
                mode=mode,
                activation="relu",
            )
        )
    # Edge: step patterns with inference before/between training steps.
    patterns = {
        "FTTF": [False, True, True, False],
        "TFTFTF": [True, False, True, False, True, False],
    }
    for rep, (pname, pattern) in itertools.product(_PATH_REPS, patterns.items()):
        rank, df, fused, mode = _PATH_REPS[rep]
        cid = f"batch_norm/edge/steps={pname}/{rep}/float32"
        out.append(
            _bn_case(
                cid,
                "batch_norm:edge",
                "batch_norm",
                "float32",
                rank,
                df,
                fused=fused,
                mode=mode,
                steps=pattern,
            )
        )
    # Edge: the seed's defaults (decay 0.999, center, no scale, eps 0.001) and
    # default initial values (no param_initializers).
    for rep, dtype in itertools.product(_PATH_REPS, ("float16", "float32")):
        rank, df, fused, mode = _PATH_REPS[rep]
        cid = f"batch_norm/edge/defaults/{rep}/{dtype}"
        out.append(
            _bn_case(
                cid,
                "batch_norm:edge",
                "batch_norm",
                dtype,
                rank,
                df,
                fused=fused,
                mode=mode,
                center=True,
                scale=False,
                decay=0.999,
                epsilon=0.001,
                init=(),
            )
        )
    # Edge: one element per channel (batch of one).
    for fused, mode in itertools.product((False, True), ("plain", "zero_debias")):
        cid = f"batch_norm/edge/n1/r2/NHWC/float32/fused={_b(fused)}/{mode}"
        out.append(
            _bn_case(
                cid,
                "batch_norm:edge",
                "batch_norm",
                "float32",
                2,
                "NHWC",
                fused=fused,
                mode=mode,
                logical=(1, (), 7),
            )
        )
    for fused in (False, True):
        cid = f"batch_norm/edge/n1/r4/NHWC/float32/fused={_b(fused)}/plain"
        out.append(
            _bn_case(
                cid,
                "batch_norm:edge",
                "batch_norm",
                "float32",
                4,
                "NHWC",
                fused=fused,
                logical=(1, (1, 1), 7),
            )
        )
    # Edge: large mean, small spread (exact grid; 120 elements per channel).
    grid = {"dist": "grid", "loc": 1000.0, "step": 0.125, "kmin": -4, "kmax": 4}
    for fused, rank in itertools.product((False, True), (2, 4)):
        cid = f"batch_norm/edge/large_mean_grid/r{rank}/NHWC/float32/fused={_b(fused)}"
        out.append(
            _bn_case(
                cid,
                "batch_norm:edge",
                "batch_norm",
                "float32",
                rank,
                "NHWC",
                fused=fused,
                x_base=grid,
            )
        )
    return out


# --------------------------------------------------------------------------
# gradients


def _fused_batch_norm_grad_cases():
    out = []
    for data_format, dtype, is_training, eps in itertools.product(
        _FBN_SHAPES, ("float16", "bfloat16", "float32"), (True, False), (0.001, 1e-5)
    ):
        shape = _FBN_SHAPES[data_format]
        arrays = _fbn_arrays(shape, data_format, dtype, with_stats=not is_training)
        del arrays["offset"]  # gradients do not depend on offset; TF's forward gets zeros
        arrays["dy"] = _spec(shape, dtype, {"dist": "normal", "loc": 0.0, "scale": 1.0})
        mode = "train" if is_training else "inference"
        cid = f"fused_batch_norm_grad/{data_format}/{dtype}/{mode}/eps={_fmt_float(eps)}"
        out.append(
            _case(
                cid,
                "grad:fused_batch_norm",
                "fused_batch_norm_grad",
                dtype,
                {"epsilon": eps, "data_format": data_format, "is_training": is_training},
                arrays,
                param_dtype="float32" if dtype != "float32" else None,
            )
        )
    # 2¹⁶ values: large enough for the NumPy backward fast path (see
    # _fused_batch_norm_large_cases).
    for data_format, shape in (("NHWC", [4, 32, 32, 16]), ("NCHW", [4, 16, 32, 32])):
        arrays = _fbn_arrays(shape, data_format, "float32", with_stats=False)
        del arrays["offset"]
        arrays["dy"] = _spec(shape, "float32", {"dist": "normal", "loc": 0.0, "scale": 1.0})
        cid = f"fused_batch_norm_grad/large/{_fmt_shape(shape)}/{data_format}/float32/train"
        out.append(
            _case(
                cid,
                "grad:fused_batch_norm",
                "fused_batch_norm_grad",
                "float32",
                {"epsilon": 0.001, "data_format": data_format, "is_training": True},
                arrays,
            )
        )
    return out


def _batch_norm_grad_cases():
    out = []
    layouts = [(2, "NHWC"), (3, "NCHW"), (4, "NHWC"), (4, "NCHW"), (5, "NCHW")]
    modes = {
        # name: (mode, is_training, renorm variant)
        "train": ("plain", True, None),
        "inference": ("plain", False, None),
        "weighted": ("weighted", True, None),
        "zero_debias": ("zero_debias", True, None),
        "renorm_clip_active": ("plain", True, "clip_active"),
    }
    for fused, (rank, df), mname, dtype in itertools.product(
        (False, True), layouts, modes, _BN_DTYPES
    ):
        mode, is_training, variant = modes[mname]
        path = predict_tf_path(
            rank, fused, mode == "weighted", mode == "zero_debias", variant is not None, dtype
        )
        if _bn_expected_error(
            path, dtype, mode == "weighted", mode == "zero_debias", variant is not None
        ):
            continue  # the forward catalogue already records these TF errors
        if df == "NCHW" and rank == 4 and dtype == "float16" and mname != "train":
            continue  # keep the NCHW rank-4 float16 block small: train only
        cid = f"batch_norm_grad/r{rank}/{df}/{dtype}/fused={_b(fused)}/{mname}"
        out.append(
            _bn_case(
                cid,
                "grad:batch_norm",
                "batch_norm_grad",
                dtype,
                rank,
                df,
                fused=fused,
                mode=mode,
                renorm_variant=variant,
                is_training=is_training,
            )
        )
    # center/scale combinations on each path, training and inference.
    for rep, (center, scale), is_training in itertools.product(
        _PATH_REPS, ((True, False), (False, True), (False, False)), (True, False)
    ):
        rank, df, fused, mode = _PATH_REPS[rep]
        if mode == "weighted" and not is_training:
            continue
        mname = "train" if is_training else "inference"
        cid = f"batch_norm_grad/cs/{rep}/center={_b(center)}/scale={_b(scale)}/{mname}"
        out.append(
            _bn_case(
                cid,
                "grad:batch_norm",
                "batch_norm_grad",
                "float32",
                rank,
                df,
                fused=fused,
                mode=mode,
                center=center,
                scale=scale,
                is_training=is_training,
            )
        )
    return out


# --------------------------------------------------------------------------
# ill-conditioned and large inputs, with TensorFlow's float64 truth


def _normal(loc, scale):
    return {"dist": "normal", "loc": loc, "scale": scale}


def _ill_conditioned_cases():
    """|mean|/σ from 1e2 to 1e4, where how a library adds its sums decides the variance.

    The statistics cases hold 2¹⁶ values (above the NumPy fast paths' cut-off:
    ``numpy`` and ``numpy-generic`` run different code on them); the layer and
    gradient cases 2¹⁴ (below it: the generic kernels on every backend). Every
    case also stores TensorFlow's float64 result for the same inputs
    (``truth``): TensorFlow's own float32 tree sums are off by about 1e-4
    relative at |mean|/σ = 1e4, more than the tolerance.

    The gradients stop at |mean|/σ = 1e2: beyond it they are not determined to
    the tolerance in float32 by any implementation. Every gradient depends on
    x − μ, and one float32 ulp of the batch mean μ (which two correct sums may
    round either way) moves dx and dγ by about (|μ|/σ)·eps relative: at 1e4,
    TensorFlow's own gradients are 4e3 to 3e5 epsilons from its float64
    truth, and ours, on another backend, differ from both by as much.
    """
    out = []
    truth = {"truth": "float64"}
    moments = (
        # (name, dtype, shape, axes, x spec): the first is the reproduction
        ("nhwc_ratio1e4", "float32", (31, 16, 16, 8), [0, 1, 2], _normal(12345.678, 1.0)),
        ("nhwc_ratio1e2", "float32", (16, 16, 16, 16), [0, 1, 2], _normal(100.0, 1.0)),
        ("nchw_ratio1e3", "float32", (16, 8, 32, 16), [0, 2, 3], _normal(1000.0, 1.0)),
        ("nchw_ratio1e4", "float32", (16, 8, 32, 16), [0, 2, 3], _normal(-1.0e4, 1.0)),
        ("nhwc_ratio1e2", "float16", (16, 16, 16, 16), [0, 1, 2], _normal(1000.0, 10.0)),
        ("nhwc_near6e4", "float16", (16, 16, 16, 16), [0, 1, 2], _normal(6.0e4, 60.0)),
    )
    for name, dtype, shape, axes, x in moments:
        cid = f"ill_conditioned/moments/{dtype}/{_fmt_shape(shape)}/{name}"
        out.append(
            _case(
                cid, "ill_conditioned:moments", "moments", dtype,
                {"axes": axes, "keepdims": False}, {"x": _spec(shape, dtype, x)}, **truth,
            )
        )
    weights = {"dist": "uniform", "low": 0.05, "high": 2.0}
    weighted = (
        ("nhwc_ratio1e4", "float32", (16, 16, 16, 16), [0, 1, 2], _normal(1.0e4, 1.0)),
        ("nchw_ratio1e2", "float16", (16, 16, 16, 16), [0, 2, 3], _normal(1000.0, 10.0)),
    )
    for name, dtype, shape, axes, x in weighted:
        cid = f"ill_conditioned/weighted_moments/{dtype}/{_fmt_shape(shape)}/{name}"
        arrays = {
            "x": _spec(shape, dtype, x),
            "frequency_weights": _spec((shape[0], 1, 1, 1), dtype, weights),
        }
        out.append(
            _case(
                cid, "ill_conditioned:weighted_moments", "weighted_moments", dtype,
                {"axes": axes, "keepdims": False}, arrays, **truth,
            )
        )
    fused = (
        ("ratio1e4", "NHWC", "float32", _normal(1.0e4, 1.0)),
        ("ratio1e4", "NCHW", "float32", _normal(1.0e4, 1.0)),
        ("near6e4", "NHWC", "float16", _normal(6.0e4, 60.0)),
    )
    for name, data_format, dtype, x in fused:
        shape = [16, 16, 16, 16]
        cid = f"ill_conditioned/fused_batch_norm/{data_format}/{dtype}/train/{name}"
        out.append(
            _case(
                cid, "ill_conditioned:fused_batch_norm", "fused_batch_norm", dtype,
                {"epsilon": 0.001, "data_format": data_format, "is_training": True,
                 "exponential_avg_factor": 1.0},
                _fbn_arrays(shape, data_format, dtype, False, x),
                param_dtype="float32" if dtype != "float32" else None, **truth,
            )
        )
    layer = (
        # (name, dtype, data_format, fused, mode, x spec): one case per TF path
        ("kerasfused_ratio1e4", "float32", "NHWC", True, "plain", _normal(1.0e4, 1.0)),
        ("keraslayer_ratio1e4", "float32", "NCHW", False, "plain", _normal(1.0e4, 1.0)),
        ("legacy_weighted_ratio1e4", "float32", "NHWC", False, "weighted", _normal(1.0e4, 1.0)),
        ("slimfused_zero_debias_ratio1e4", "float32", "NHWC", True, "zero_debias",
         _normal(1.0e4, 1.0)),
        ("kerasfused_ratio1e2", "float16", "NHWC", True, "plain", _normal(1000.0, 10.0)),
    )
    logical = (16, (8, 8), 16)
    for name, dtype, data_format, is_fused, mode, x in layer:
        cid = f"ill_conditioned/batch_norm/r4/{data_format}/{dtype}/{name}"
        case = _bn_case(
            cid, "ill_conditioned:batch_norm", "batch_norm", dtype, 4, data_format,
            fused=is_fused, mode=mode, steps=[True, False], logical=logical, x_base=x,
        )
        out.append(dict(case, **truth))
    for data_format in ("NHWC", "NCHW"):
        shape, _ = _layout(4, data_format, logical)
        arrays = _fbn_arrays(shape, data_format, "float32", False, _normal(100.0, 1.0))
        del arrays["offset"]
        arrays["dy"] = _spec(shape, "float32", _normal(0.0, 1.0))
        cid = f"ill_conditioned/fused_batch_norm_grad/{data_format}/float32/train/ratio1e2"
        out.append(
            _case(
                cid, "ill_conditioned:grad", "fused_batch_norm_grad", "float32",
                {"epsilon": 0.001, "data_format": data_format, "is_training": True},
                arrays, **truth,
            )
        )
    grads = (
        ("kerasfused_ratio1e2", "NHWC", True, "plain"),
        ("legacy_weighted_ratio1e2", "NHWC", False, "weighted"),
        ("keraslayer_ratio1e2", "NCHW", False, "plain"),
    )
    for name, data_format, is_fused, mode in grads:
        cid = f"ill_conditioned/batch_norm_grad/r4/{data_format}/float32/train/{name}"
        case = _bn_case(
            cid, "ill_conditioned:grad", "batch_norm_grad", "float32", 4, data_format,
            fused=is_fused, mode=mode, is_training=True, logical=logical,
            x_base=_normal(100.0, 1.0),
        )
        out.append(dict(case, **truth))
    return out


# --------------------------------------------------------------------------
# configurations TF rejects (besides those the products above mark)


def _error_cases():
    out = []

    def fbn(cid, shape, data_format, dtype, is_training, factor, with_stats):
        arrays = {
            "x": _spec(shape, dtype, {"dist": "normal", "loc": 0.0, "scale": 1.0}),
            "scale": _spec(
                [shape[_channel_axis(data_format, len(shape)) if len(shape) in (4, 5) else -1]],
                "float32",
                {"dist": "uniform", "low": 0.5, "high": 1.5},
            ),
        }
        c = arrays["scale"]["shape"][0]
        arrays["offset"] = _spec([c], "float32", {"dist": "normal", "loc": 0.0, "scale": 0.5})
        if with_stats:
            arrays["mean"] = _spec([c], "float32", {"dist": "normal", "loc": 0.0, "scale": 1.0})
            arrays["variance"] = _spec([c], "float32", {"dist": "uniform", "low": 0.5, "high": 2.0})
        return _case(
            cid,
            "errors",
            "fused_batch_norm",
            dtype,
            {
                "epsilon": 0.001,
                "data_format": data_format,
                "is_training": is_training,
                "exponential_avg_factor": factor,
            },
            arrays,
            param_dtype="float32" if dtype != "float32" else None,
            expect_error=True,
        )

    out.append(
        fbn(
            "fused_batch_norm/errors/float64_input",
            [2, 3, 3, 4],
            "NHWC",
            "float64",
            True,
            1.0,
            False,
        )
    )
    out.append(fbn("fused_batch_norm/errors/rank3", [2, 3, 4], "NHWC", "float32", True, 1.0, False))
    out.append(
        fbn(
            "fused_batch_norm/errors/rank5_with_NHWC",
            [2, 2, 3, 3, 4],
            "NHWC",
            "float32",
            True,
            1.0,
            False,
        )
    )
    out.append(
        fbn(
            "fused_batch_norm/errors/rank4_with_NDHWC",
            [2, 3, 3, 4],
            "NDHWC",
            "float32",
            True,
            1.0,
            False,
        )
    )
    out.append(
        fbn(
            "fused_batch_norm/errors/inference_without_stats",
            [2, 3, 3, 4],
            "NHWC",
            "float32",
            False,
            1.0,
            False,
        )
    )
    out.append(
        fbn(
            "fused_batch_norm/errors/avg_factor_without_stats",
            [2, 3, 3, 4],
            "NHWC",
            "float32",
            True,
            0.3,
            False,
        )
    )
    grad = _case(
        "fused_batch_norm_grad/errors/float64_input",
        "errors",
        "fused_batch_norm_grad",
        "float64",
        {"epsilon": 0.001, "data_format": "NHWC", "is_training": False},
        {
            "x": _spec([2, 3, 3, 4], "float64", {"dist": "normal", "loc": 0.0, "scale": 1.0}),
            "dy": _spec([2, 3, 3, 4], "float64", {"dist": "normal", "loc": 0.0, "scale": 1.0}),
            "scale": _spec([4], "float32", {"dist": "uniform", "low": 0.5, "high": 1.5}),
            "mean": _spec([4], "float32", {"dist": "normal", "loc": 0.0, "scale": 1.0}),
            "variance": _spec([4], "float32", {"dist": "uniform", "low": 0.5, "high": 2.0}),
        },
        param_dtype="float32",
        expect_error=True,
    )
    out.append(grad)
    wm = _case(
        "weighted_moments/errors/weights_not_broadcastable",
        "errors",
        "weighted_moments",
        "float32",
        {"axes": [0], "keepdims": False},
        {
            "x": _spec([10, 6], "float32", {"dist": "normal", "loc": 0.0, "scale": 1.0}),
            "frequency_weights": _spec(
                [10, 4], "float32", {"dist": "uniform", "low": 0.0, "high": 2.0}
            ),
        },
        expect_error=True,
    )
    out.append(wm)
    # batch_norm configurations rejected by tf_slim / tf-keras.
    for rank, df, fused in ((2, "NHWC", False), (4, "NCHW", True)):
        for mode in ("weighted", "zero_debias"):
            cid = f"batch_norm/errors/renorm_with_{mode}/r{rank}/{df}/float32/fused={_b(fused)}"
            out.append(
                _bn_case(
                    cid,
                    "errors",
                    "batch_norm",
                    "float32",
                    rank,
                    df,
                    fused=fused,
                    mode=mode,
                    renorm_variant="clip_active",
                )
            )
    case = _bn_case(
        "batch_norm/errors/renorm_clipping_unknown_key/r4/NHWC/float32",
        "errors",
        "batch_norm",
        "float32",
        4,
        "NHWC",
        fused=False,
        renorm_variant="clip_active",
    )
    case["kwargs"]["renorm_clipping"] = {"rmax": 2.0, "rmin": 0.5, "dmax": 1.0, "bmax": 1.0}
    case["expect_error"] = True
    out.append(case)
    return out


def cases() -> list[dict]:
    """All conformance cases, in a fixed order."""
    out = (
        _moments_cases()
        + _weighted_moments_cases()
        + _batch_normalization_cases()
        + _fused_batch_norm_cases()
        + _fused_batch_norm_large_cases()
        + _batch_norm_cases()
        + _fused_batch_norm_grad_cases()
        + _batch_norm_grad_cases()
        + _error_cases()
        + _ill_conditioned_cases()
    )
    seen = set()
    for case in out:
        cid = case["id"]
        if not _SAFE_ID.match(cid):
            raise ValueError(f"unsafe case id {cid!r}")
        if cid in seen:
            raise ValueError(f"duplicate case id {cid!r}")
        if case["op"] not in OPS or case["group"] not in GROUPS:
            raise ValueError(f"bad op/group in {cid!r}")
        seen.add(cid)
        canonical_json(case)  # JSON-serialisable, no NaN
    return out


if __name__ == "__main__":  # pragma: no cover - a quick census
    import collections

    all_cases = cases()
    by_group = collections.Counter(c["group"] for c in all_cases)
    for group in GROUPS:
        print(f"{group:28s} {by_group.get(group, 0)}")
    print(f"{'total':28s} {len(all_cases)}")

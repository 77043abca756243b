"""Cases of the stateless ops: moments, weighted_moments and batch_normalization.

Part of the catalogue (``conformance/catalogue.py``); standard library only.
"""

from __future__ import annotations

import itertools

from ._cases_common import _b, _case, _fmt_float, _fmt_shape, _spec


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

"""Configurations TensorFlow rejects (besides those the other builders mark).

Part of the catalogue (``conformance/catalogue.py``); standard library only.
"""

from __future__ import annotations

from ._cases_common import _b, _case, _spec
from ._cases_fused import _channel_axis
from ._cases_layer import _bn_case


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

"""Cases of the raw fused op: fused_batch_norm (edge cases, large inputs) and its gradient.

Part of the catalogue (``conformance/catalogue.py``); standard library only.
"""

from __future__ import annotations

import itertools

from ._cases_common import _X_NORMAL, _case, _fmt_float, _fmt_shape, _spec

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

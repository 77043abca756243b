"""Ill-conditioned and large inputs, with TensorFlow's float64 truth.

Part of the catalogue (``conformance/catalogue.py``); standard library only.
"""

from __future__ import annotations

from ._cases_common import _case, _fmt_shape, _layout, _spec
from ._cases_fused import _fbn_arrays
from ._cases_layer import _bn_case


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

"""The tf_slim.layers.batch_norm case builder, ``_bn_case``, and what it decides with.

Which TensorFlow path a configuration takes (``predict_tf_path``), whether TensorFlow
rejects it, the renorm variants, one layer configuration per path, the initial values.

Part of the catalogue (``conformance/catalogue.py``); standard library only.
"""

from __future__ import annotations

from ._cases_common import _X_NORMAL, _case, _layout, _spec


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

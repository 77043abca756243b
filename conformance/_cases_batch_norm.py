"""Cases of tf_slim.layers.batch_norm and of its gradients (``batch_norm_grad``).

Part of the catalogue (``conformance/catalogue.py``); standard library only.
"""

from __future__ import annotations

import itertools

from ._cases_common import _b, _fmt_float
from ._cases_layer import (
    _PATH_REPS,
    _RENORM_VARIANTS,
    _bn_case,
    _bn_expected_error,
    predict_tf_path,
)


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

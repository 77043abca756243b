"""Shared pieces of the case builders: ids, seeds, array specs, the case dict, layouts.

Part of the catalogue (``conformance/catalogue.py``); standard library only.
"""

from __future__ import annotations

import hashlib

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

"""Which calls the NumPy fast paths take; everything else returns NotImplemented (the generic path).

Taken: C-contiguous, non-empty NumPy arrays of at least ``SMALLEST_INPUT``
values (``SMALLEST_HALF_INPUT`` for float16) whose per-channel parameters vary
along one axis at most. Left to the generic kernels: smaller inputs (a few
whole-array ufuncs are quicker there), other layouts and array types,
bfloat16, and parameters that vary along several axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _plan
from ._plan import compute_dtype

#: What the fused kernels take (their statistics are float32 whatever x is).
FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
#: What the moments, ``normalize`` and the backward take.
MOMENT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))


def large_plain_array(x: Any, dtypes: tuple[np.dtype[Any], ...]) -> bool:
    """A C-contiguous, non-empty NumPy array of one of ``dtypes``, large enough to gain."""
    smallest = _plan.SMALLEST_HALF_INPUT if x.dtype == np.float16 else _plan.SMALLEST_INPUT
    return (
        type(x) is np.ndarray
        and x.dtype in dtypes
        and x.flags.c_contiguous
        and x.ndim >= 1
        and x.size > 0
        and x.size >= smallest
    )


def fusable(x: Any, *parameters: Any) -> bool:
    """``x`` for the fused kernels, with float32 ``[C]`` parameters."""
    return large_plain_array(x, FUSED_DTYPES) and all(
        type(p) is np.ndarray and p.dtype == np.float32 and p.ndim == 1 for p in parameters
    )


def same_layout(other: Any, x: Any) -> bool:
    """``other`` is a C-contiguous NumPy array of ``x``'s dtype and shape."""
    return (
        type(other) is np.ndarray
        and other.dtype == x.dtype
        and other.shape == x.shape
        and other.flags.c_contiguous
    )


def compute_vector(value: Any, x: Any) -> bool:
    """``value`` is a ``[C]`` NumPy array in x's compute dtype (``gradient_sums``' mean)."""
    return type(value) is np.ndarray and value.ndim == 1 and value.dtype == compute_dtype(x.dtype)


def single_varying_axis(
    shape: tuple[int, ...], parameter_shapes: list[tuple[int, ...]]
) -> int | None:
    """The one axis the parameters vary along; -1 if none does; None if several or broadcast grows x."""
    rank = len(shape)
    varying = set()
    for parameter_shape in parameter_shapes:
        if len(parameter_shape) > rank:
            return None
        padded = (1,) * (rank - len(parameter_shape)) + tuple(parameter_shape)
        for axis, (size, parameter_size) in enumerate(zip(shape, padded)):
            if parameter_size == 1:
                continue
            if parameter_size != size:
                return None
            varying.add(axis)
    if len(varying) > 1:
        return None
    return varying.pop() if varying else -1

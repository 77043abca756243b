"""Dtype rules shared by every entry point (TensorFlow's accumulation rules)."""

from __future__ import annotations

import enum
import functools
import re
import struct
from typing import Any

from ._typing import Device, Namespace

_WORD = re.compile(r"[A-Za-z0-9_]+")

#: (dtype class, dtype) -> name: ``str(dtype)`` is slow on NumPy dtypes, and every
#: call checks several. The class comes first so that dtypes of two libraries are
#: never compared with each other (array-api-strict warns when they are).
_NAMES: dict[tuple[type, Any], str] = {}


def dtype_name(dtype: Any) -> str:
    """``float32`` for any library's float32, for messages and dispatch."""
    key = (type(dtype), dtype)
    try:
        return _NAMES[key]
    except (KeyError, TypeError):  # TypeError: an unhashable dtype object
        pass
    # The last word of "float32", "torch.float32", "dtype('float32')" or, for a
    # scalar type given as a dtype, "<class 'numpy.float32'>".
    words = _WORD.findall(str(dtype))
    name = words[-1] if words else str(dtype)
    try:
        if len(_NAMES) < 256:  # a handful of dtypes per library in practice
            _NAMES[key] = name
    except TypeError:
        pass
    return name


def is_half(dtype: Any) -> bool:
    """True for float16 and bfloat16, which TensorFlow computes in float32."""
    return dtype_name(dtype) in ("float16", "bfloat16")


class ComputeRule(enum.Enum):
    """Which dtype a computation on data of a given dtype runs in: TensorFlow's rules.

    Each caller names its rule; none is implied. The conformance goldens check
    each against TensorFlow (bfloat16 ``tf.nn.moments`` cases, the fused
    kernel's float16 and bfloat16 cases, the Keras layer's half-precision cases).
    """

    #: ``tf.nn.moments`` and ``tf.nn.weighted_moments``: float16 is computed in
    #: float32 ("the dynamic range of fp16 is too limited"), bfloat16 in bfloat16.
    MOMENTS = "moments"
    #: The Keras layer, its gradients and the mergeable summaries: both half
    #: types in float32 (the layer's compute dtype), every other dtype as it is.
    HALF_IN_FLOAT32 = "half in float32"
    #: TensorFlow's fused kernel: float32 whatever the input.
    FLOAT32 = "float32"


def compute_dtype(xp: Namespace, dtype: Any, rule: ComputeRule) -> Any:
    """The dtype arithmetic on ``dtype`` data happens in, under ``rule``."""
    if rule is ComputeRule.FLOAT32:
        return xp.float32
    name = dtype_name(dtype)
    if name == "float16" or (name == "bfloat16" and rule is ComputeRule.HALF_IN_FLOAT32):
        return xp.float32
    return dtype


def astype(array: Any, dtype: Any, xp: Namespace) -> Any:
    """``array`` in ``dtype``, without a copy when it already is."""
    return array if array.dtype == dtype else xp.astype(array, dtype)


def scalar(xp: Namespace, value: float, dtype: Any, device: Device) -> Any:
    """A 0-d array holding ``value`` rounded once to ``dtype``.

    Used where TensorFlow rounds a constant to the tensor's dtype before the
    arithmetic (the fused kernel's ``1 / n`` and Bessel factor, clipping
    bounds): a bare Python float would be combined at the array's precision
    on most backends, but not all promise it.

    ``full`` rather than ``asarray``: on a GPU it fills on the device, where
    ``asarray`` of a host number copies it over and synchronizes.
    """
    return xp.full((), value, dtype=dtype, device=device)


def tf_constant(xp: Namespace, value: float, dtype: Any, device: Device) -> Any:
    """A Python float converted the way ``tf.convert_to_tensor`` then ``tf.cast`` do.

    TensorFlow turns a bare Python float into a float32 tensor and only then
    casts it to the variable's dtype, so a float64 variable sees the float32
    rounding of, for example, ``1 - decay``.
    """
    as_float32 = xp.full((), value, dtype=xp.float32, device=device)
    return xp.astype(as_float32, dtype) if dtype != xp.float32 else as_float32


def float32_value(value: float) -> float:
    """``value`` rounded to the nearest float32, uncached: what ``round_to_float32``
    remembers, for code that PyTorch's compiler may trace (it refuses ``lru_cache``)."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


@functools.lru_cache(maxsize=1024)
def round_to_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (as a Python float, exactly that float32).

    A Python float holding a float32 value multiplies a float32 or float64 array
    to the same bits on every backend, whatever precision it computes in (the
    exact product fits a double), so such constants need no 0-d array (and no
    array operation) per call. Remembered (a pure function of a float): a
    training loop asks for the same few constants on every step; it is never
    called while PyTorch's compiler traces, where those constants are 0-d arrays.
    """
    return float32_value(value)

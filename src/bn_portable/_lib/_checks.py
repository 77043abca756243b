"""Argument validation shared by every public entry point.

Every check raises ``TypeError`` (wrong kind of thing, dtype or library) or
``ValueError`` (right kind, wrong value or shape) with a message that names the
argument and says what was expected. Checks look at Python values, shapes and
dtypes only, never at array contents, so they work on lazy and traced arrays.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._backends import library_name, not_dense
from ._compat import (
    array_namespace,
    device,
    is_array_api_obj,
)
from ._dtypes import dtype_name, is_half
from ._typing import Namespace


def namespace(**named: Any) -> Any:
    """The array namespace shared by the named arrays; ``None`` values are skipped.

    The first argument (``x``) is required and sets the namespace; any other
    library is a ``TypeError`` that names the argument. Every array must be a
    plain dense array (see ``check_dense``).
    """
    xp, first = None, None
    for name, value in named.items():
        if value is None and first is not None:
            continue
        check_dense(name, value)
        value_xp = array_namespace(value)
        if xp is None:
            xp, first = value_xp, name
        elif value_xp is not xp:
            raise TypeError(
                f"{name} is a {library_name(value_xp)} array but {first} is a "
                f"{library_name(xp)} array: pass arrays of one library"
            )
    return xp


def check_namespace(name: str, value: Any, xp: Namespace, reference: str = "x") -> None:
    """``value`` is a plain dense array of namespace ``xp`` (the one of ``reference``)."""
    check_dense(name, value)
    value_xp = array_namespace(value)
    if value_xp is not xp:
        raise TypeError(
            f"{name} is a {library_name(value_xp)} array but {reference} is a "
            f"{library_name(xp)} array: pass arrays of one library"
        )


_LIBRARIES = "NumPy, CuPy, PyTorch, JAX, Dask or array-api-strict"


def check_dense(name: str, value: Any) -> None:
    """``value`` is a plain dense array of a supported library (see ``_backends.not_dense``).

    Refused with a ``TypeError``: ``None`` and non-arrays, NumPy masked arrays
    and PyTorch tensors of a layout other than strided. Types and layouts only.
    """
    if not is_array_api_obj(value):
        raise TypeError(f"{name} must be an array ({_LIBRARIES}), got {type(value).__name__}")
    problem = not_dense(value)
    if problem == "masked":
        raise TypeError(
            f"{name} must be a plain dense array, got a NumPy masked array: pass "
            f"{name}.filled(...) or select the unmasked values, and give them weights "
            "(weighted_moments, batch_weights) if some must not count"
        )
    if problem is not None:
        raise TypeError(
            f"{name} must be a dense (strided) tensor, got {problem}: pass {name}.to_dense()"
        )


def check_device(name: str, value: Any, expected: Any, reference: str = "x") -> None:
    """``value`` lives on ``expected`` (the device of ``reference``).

    A traced JAX array has no device (``None``); placement is then XLA's.
    """
    actual = device(value)
    if actual is not None and expected is not None and actual != expected:
        raise ValueError(
            f"{name} is on device {actual} but {reference} is on {expected}: move it there first"
        )


def check_known_shape(name: str, array: Any) -> None:
    """Every length of ``array`` is known (a Dask array may have unknown chunk sizes)."""
    for axis, length in enumerate(array.shape):
        if length is None or (isinstance(length, float) and math.isnan(length)):
            raise ValueError(
                f"{name} has an unknown length along axis {axis} (a Dask array with unknown "
                "chunk sizes?); the batch statistics need it: call compute_chunk_sizes() first"
            )


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a Python bool, got {value!r}")


def check_real(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    allow: tuple[float, ...] = (),
) -> float:
    """A finite real number (Python or NumPy scalar) in ``[low, high]`` (``(low, high]`` with low_open).

    ``allow`` lists infinite values accepted besides (``inf`` as "no bound").
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(value, numbers.Real):
        hint = " (under jax.jit, pass it as a static argument)" if "Tracer" in type(value).__name__ else ""
        raise TypeError(f"{name} must be a real number, got {value!r}{hint}")
    given: Any = value
    number: float
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range, 10**400 say
        number = math.inf if given > 0 else -math.inf
    if number in allow:
        return number
    below = number <= low if low_open else number < low
    if not math.isfinite(number) or below or number > high:
        also = "".join(f" or {v}" for v in allow)
        raise ValueError(
            f"{name} must be {_interval(low, high, low_open)}{also}, got {_short(given)}"
        )
    return number


def _interval(low: float, high: float, low_open: bool) -> str:
    """``a finite number in [0.0, 1.0]``, ``a finite number > 0.0`` and so on."""
    if high == math.inf:
        if low == -math.inf:
            return "a finite number"
        return f"a finite number {'>' if low_open else '>='} {low}"
    return f"a finite number in {'(' if low_open else '['}{low}, {high}]"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}... ({len(text)} characters)"


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    choice: str = value  # one of the strings in choices
    return choice


def check_callable(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable or None, got {type(value).__name__}")


def check_options_dict(name: str, value: Any, keys: Sequence[str]) -> dict[str, Any]:
    """A dict (or None, meaning empty) whose keys are among ``keys``; a copy."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict or None, got {type(value).__name__}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; expected some of {', '.join(keys)}")
    return dict(value)


#: The floating dtypes TensorFlow has (NumPy's longdouble, for one, has no TensorFlow counterpart).
_TF_FLOATING = ("float16", "bfloat16", "float32", "float64")


def check_floating(name: str, array: Any, xp: Namespace, allowed: Iterable[str] | None = None) -> None:
    """``array`` has a real floating dtype TensorFlow has, one of ``allowed`` when given."""
    name_of_dtype = dtype_name(array.dtype)
    if allowed is None and name_of_dtype not in _TF_FLOATING:
        raise TypeError(
            f"{name} must have a real floating dtype TensorFlow has "
            f"({', '.join(_TF_FLOATING)}), got {name_of_dtype}"
        )
    if allowed is not None and name_of_dtype not in tuple(allowed):
        raise TypeError(f"{name} must have dtype {' or '.join(allowed)}, got {name_of_dtype}")


def check_real_dtype(name: str, array: Any, xp: Namespace) -> None:
    """A real, integer or boolean dtype: TensorFlow casts weights to x's dtype.

    Complex weights are refused: TensorFlow's cast would drop the imaginary
    part silently, which has no meaning for a frequency.
    """
    if not (is_half(array.dtype) or xp.isdtype(array.dtype, ("real floating", "integral", "bool"))):
        raise TypeError(
            f"{name} must have a real floating, integer or bool dtype (it is cast to x's "
            f"dtype), got {dtype_name(array.dtype)}"
        )


def check_broadcasts_to(name: str, array: Any, shape: tuple[int, ...]) -> None:
    """``array`` broadcasts to ``shape`` without making it larger."""
    padded = (1,) * (len(shape) - array.ndim) + tuple(array.shape)
    if array.ndim > len(shape) or any(a not in (1, n) for a, n in zip(padded, shape)):
        raise ValueError(f"{name} must broadcast to shape {shape}; got shape {tuple(array.shape)}")


def check_rank(name: str, array: Any, ranks: Sequence[int]) -> int:
    rank: int = array.ndim
    if rank not in ranks:
        expected = ", ".join(map(str, ranks))
        raise ValueError(f"{name} must have rank {expected}; got shape {tuple(array.shape)}")
    return rank


def check_shape(name: str, array: Any, shape: tuple[int, ...], what: str) -> None:
    if tuple(array.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}); got {tuple(array.shape)}")


def check_same_dtype(named: dict[str, Any]) -> None:
    """Every non-None array in ``named`` has the dtype of the first."""
    present = [(name, value) for name, value in named.items() if value is not None]
    if not present:
        return
    first_name, first = present[0]
    for name, value in present[1:]:
        if value.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {dtype_name(value.dtype)} but {first_name} has "
                f"{dtype_name(first.dtype)}: they must match (TensorFlow does not mix them)"
            )


def normalize_axes(name: str, axes: Any, ndim: int, *, none_means_all: bool = False) -> tuple[int, ...]:
    """Axes as a sorted tuple of non-negative ints; rejects duplicates and out-of-range.

    With ``none_means_all``, ``None`` is every axis (``tf.nn.moments``' reading).
    """
    if axes is None and none_means_all:
        return tuple(range(ndim))
    if isinstance(axes, (bool, str)):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {axes!r}")
    try:
        items: tuple[int, ...] = (operator.index(axes),)
    except TypeError:
        try:
            items = tuple(_axis(a) for a in axes)
        except TypeError:
            raise TypeError(f"{name} must be an int or a sequence of ints, got {axes!r}") from None
    if not all(-ndim <= a < ndim for a in items):
        raise ValueError(f"{name} must be in [-{ndim}, {ndim}) for an input of rank {ndim}; got {axes!r}")
    normalized = tuple(sorted(a % ndim for a in items))
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"{name} must not repeat an axis, got {axes!r}")
    return normalized


def _axis(value: Any) -> int:
    """One axis of a sequence: an int, never a bool (``[True]`` is no more an axis than ``True``)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TypeError("a bool is not an axis")
    return operator.index(value)

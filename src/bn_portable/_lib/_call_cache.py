"""What validation and planning decided, remembered per call signature.

A public call's checks and its plan depend only on what its arguments are,
never on their values: the library (array type), shapes, dtypes, devices and
the validated Python options. So once a signature has passed, a later call with
the same signature would pass again and plan the same: ``remember`` keeps the
result, keyed by that signature, and the call skips straight to the arithmetic.
A call whose signature was never seen runs every check as before, so bad input
raises exactly as without the cache, and nothing here reads an array value.

Only array types whose signature is cheap and complete are remembered: exact
NumPy ``ndarray`` (always on the CPU) and PyTorch ``Tensor`` / ``Parameter``
(``.device`` says where it lives). Anything else (masked or sparse arrays,
subclasses, JAX tracers, Dask) has no signature, and such calls always run
every check. Under ``torch.compile`` the cache is bypassed: the checks are then
traced once per compiled shape instead, and a shape may be symbolic.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import fields
from typing import Any

#: Signatures remembered (most recently used kept): a model has a few dozen
#: batch-norm layers of a few shapes.
CAPACITY = 256

_entries: OrderedDict[Hashable, Any] = OrderedDict()
_lock = threading.Lock()


def remember(key: Hashable | None, compute: Callable[[], Any]) -> Any:
    """``compute()``, or what it returned before for ``key`` (None: never remembered).

    The lock guards only the dictionary (concurrent callers may evict each
    other's entries); ``compute`` runs outside it, so two threads may both
    compute a new signature's answer, which is the same answer.
    """
    if key is None:
        return compute()
    try:
        with _lock:
            found = _entries[key]
            _entries.move_to_end(key)
        return found
    except KeyError:
        pass
    except TypeError:  # an unhashable piece slipped into the key: do not remember
        return compute()
    value = compute()  # raises for bad input: nothing is stored then
    with _lock:
        _entries[key] = value
        if len(_entries) > CAPACITY:
            _entries.popitem(last=False)
    return value


def clear() -> None:
    with _lock:
        _entries.clear()


def signature(*arrays: Any) -> tuple[Any, ...] | None:
    """Type, shape, dtype and device of each array (None entries allowed); None if any has none."""
    if tracing():
        return None
    numpy = sys.modules.get("numpy")
    ndarray = None if numpy is None else numpy.ndarray
    torch: Any = sys.modules.get("torch")
    tensors = () if torch is None else (torch.Tensor, torch.nn.Parameter)
    parts: list[Any] = []
    for array in arrays:
        kind = type(array)
        if array is None:
            parts.append(None)
        elif kind is ndarray:
            parts.append((kind, array.shape, array.dtype))
        elif kind in tensors:
            # torch.Size is a tuple: hashable and equal to the same shape as a tuple.
            parts.append((kind, array.shape, array.dtype, array.device))
        else:
            return None
    return tuple(parts)


def tracing() -> bool:
    """Whether PyTorch's compiler is tracing this call (the cache is bypassed then)."""
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.compiler.is_compiling())


def options_signature(options: Any) -> tuple[Any, ...] | None:
    """A validated options dataclass as a hashable tuple; None if some option is not hashable.

    Mappings (already validated copies) become sorted item tuples; a non-empty
    mapping of arrays or callables (initializers) is not remembered.
    """
    values = []
    for field in fields(options):
        value = getattr(options, field.name)
        if isinstance(value, Mapping):
            if any(not isinstance(v, (int, float, str, bool, type(None))) for v in value.values()):
                return None
            value = tuple(sorted(value.items()))
        values.append(value)
    key = (type(options), tuple(values))
    try:
        hash(key)
    except TypeError:
        return None
    return key

"""Planning as a pure function of metadata, remembered per key.

A public call's checks and its plan are functions of what its arguments are,
never of their values: the array metadata ``_backends.metadata`` reads on every
call (type, shape, dtype, and for PyTorch device and layout) and the validated
Python options. ``remember(key, compute)`` keeps what ``compute`` returned for
a key that holds all of that, so a repeated call skips straight to the
arithmetic. The key is read afresh on every call and a failing ``compute``
stores nothing, so bad input raises the same way whatever came before (a
sparse tensor after a dense one of the same shape included: the layout is in
the key). Nothing here reads an array value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import fields
from typing import Any

#: Signatures remembered (the oldest dropped first): a model has a few dozen
#: batch-norm layers of a few shapes.
CAPACITY = 256

#: Insertion-ordered: the first key is the oldest.
_entries: dict[Hashable, Any] = {}
_lock = threading.Lock()
_MISSING = object()


def remember(key: Hashable | None, compute: Callable[[], Any]) -> Any:
    """``compute()``, or what it returned before for ``key`` (None: never remembered).

    A hit is one dictionary read, without the lock (a read of a dict is atomic,
    with or without the GIL): every small call makes one, and the lock
    and a most-recently-used reordering cost more than the read. The lock
    guards the writes only; ``compute`` runs outside it, so two threads may
    both compute a new signature's answer, which is the same answer. Past
    ``CAPACITY`` the oldest entries go first.
    """
    if key is None:
        return compute()
    try:
        found = _entries.get(key, _MISSING)
    except TypeError:  # an unhashable piece slipped into the key: do not remember
        return compute()
    if found is not _MISSING:
        return found
    value = compute()  # raises for bad input: nothing is stored then
    with _lock:
        _entries[key] = value
        while len(_entries) > CAPACITY:
            del _entries[next(iter(_entries))]
    return value


def clear() -> None:
    with _lock:
        _entries.clear()


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

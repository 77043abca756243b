"""The switch between fast paths and the generic kernels (context-local)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from . import _settings

_enabled: ContextVar[bool] = ContextVar(
    "bn_portable_fast_paths", default=_settings.fast_paths_from_environment()  # noqa: B039 (a bool)
)

def fast_paths_enabled() -> bool:
    """Whether kernels may use a library's fast path (in this context).

    Examples
    --------
    >>> import bn_portable as bn
    >>> with bn.fast_paths(False):
    ...     print(bn.fast_paths_enabled())
    False
    """
    return _enabled.get()


@contextlib.contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """Turn the fast paths on or off inside a ``with`` block (context-local).

    Examples
    --------
    >>> import numpy as np
    >>> import bn_portable as bn
    >>> x = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    >>> with bn.fast_paths(False):  # the portable kernels only
    ...     mean, variance = bn.moments(x, axes=[0])
    >>> print(mean)
    [-0.27272728 -0.09090909  0.09090909  0.27272728]
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a Python bool, got {enabled!r}")
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)



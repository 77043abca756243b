"""Optional fast paths, one module per library, behind one switch.

The generic, array-API implementation is the definition; a fast path replaces
one of its kernels for one library where that library can do the same
arithmetic faster (see each module for why it is exact). A kernel marked
``@overridable`` looks for a function of the same name in the module of the
input's library and calls it with the same arguments; the fast path may return
``NotImplemented`` to hand the call back (an unsupported dtype, say).

``fast_paths(False)`` (or ``BN_PORTABLE_FAST_PATHS=0`` in the environment)
forces the generic path, which is how the conformance suite checks both.

Inside ``torch.compile`` the switch is read once, when a function is traced,
and its value is part of the compiled code (a fast-path module may say so with
an ``enabled`` function, see ``_torch``): reading a ``ContextVar`` would break
the graph. Compile again (``torch._dynamo.reset()``) after changing it for an
already compiled function.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from .._lib._compat import is_cupy_namespace, is_numpy_namespace, is_torch_namespace
from . import _settings

_enabled: ContextVar[bool] = ContextVar(
    "bn_portable_fast_paths", default=_settings.fast_paths_from_environment()  # noqa: B039 (a bool)
)

F = TypeVar("F", bound=Callable[..., Any])


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


def _backend_module(xp: Any) -> Any:
    """The fast-path module for ``xp``'s library, or None (imported lazily).

    Import statements rather than ``importlib``: the compiler traces them.
    """
    if is_torch_namespace(xp):
        from . import _torch

        return _torch
    if is_cupy_namespace(xp):
        return _import_fast_paths("_cupy")
    if is_numpy_namespace(xp):
        from . import _numpy

        return _numpy
    return None


@functools.cache
def _import_fast_paths(module: str) -> Any:
    try:
        return importlib.import_module(f".{module}", __name__)
    except ModuleNotFoundError as error:
        # Only the module's own absence means "no fast path"; a failing import
        # inside it is a bug to see, not to hide behind the generic path.
        if error.name != f"{__name__}.{module}":
            raise
        return None


def overridable(generic: F) -> F:
    """Let a library's fast path replace ``generic`` (whose last argument is ``xp``)."""
    name = generic.__name__

    @functools.wraps(generic)
    def dispatch(*args: Any) -> Any:
        module = _backend_module(args[-1])
        # A module may say how its library reads the switch (``enabled``).
        if module is not None and getattr(module, "enabled", fast_paths_enabled)():
            fast = getattr(module, name, None)
            if fast is not None:
                result = fast(*args)
                if result is not NotImplemented:
                    return result
        return generic(*args)

    dispatch.generic = generic  # type: ignore[attr-defined]
    return dispatch  # type: ignore[return-value]

"""Optional fast paths, one module per library, behind one switch.

The generic, array-API implementation is the definition; a fast path replaces
one of its kernels for one library where that library can do the same
arithmetic faster (each module says why it stays within the accuracy
contract). A generic kernel declares which ``Kernel`` it is with
``@overridable(Kernel.X)``; the fast-path module of the input's library lists
the kernels it serves in ``KERNELS``, says how it reads the switch
(``enabled``), and may return ``NotImplemented`` to hand a call back (an
unsupported dtype or layout, an input too small to gain).
PyTorch and NumPy have fast paths; every other library runs the generic kernels.

``fast_paths(False)`` (or ``BN_PORTABLE_FAST_PATHS=0`` in the environment)
forces the generic path, which is how the conformance suite checks both.

Inside ``torch.compile`` the switch is read once, when a function is traced,
and its value is part of the compiled code (``_torch.enabled``): reading a
``ContextVar`` would break the graph. Compile again (``torch._dynamo.reset()``) after changing it for an
already compiled function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from .._lib._compat import is_numpy_namespace, is_torch_namespace
from .._lib._typing import Namespace
from ._registry import Kernel
from ._switch import fast_paths, fast_paths_enabled

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Kernel", "fast_path", "fast_paths", "fast_paths_enabled", "overridable"]



#: The fast-path module of each namespace (by name), or None: a pure function of
#: the namespace, remembered because every kernel call asks.
_MODULES: dict[str, Any] = {}


def fast_path(kernel: Kernel, xp: Namespace) -> Callable[..., Any] | None:
    """The fast path serving ``kernel`` for ``xp``'s library, or None (none, or switched off)."""
    try:
        module = _MODULES[xp.__name__]
    except KeyError:
        module = _MODULES.setdefault(xp.__name__, _fast_path_module(xp))
    # Each module says how its library reads the switch (``enabled``).
    if module is None or not module.enabled():
        return None
    found: Callable[..., Any] | None = module.KERNELS.get(kernel)
    return found


def _fast_path_module(xp: Namespace) -> Any:
    """The fast-path module for ``xp``'s library, or None.

    Imported on first use: each imports its library (PyTorch, NumPy), which
    ``import bn_portable`` must not. Import statements rather than
    ``importlib``: the compiler traces them.
    """
    if is_torch_namespace(xp):
        from . import _torch

        return _torch
    if is_numpy_namespace(xp):
        from . import _numpy

        return _numpy
    return None


def overridable(kernel: Kernel) -> Callable[[F], F]:
    """Let a library's fast path for ``kernel`` replace the decorated generic kernel.

    The generic kernel takes ``xp`` as a keyword; the fast path takes the same
    parameters (``tests/test_structure.py`` checks every one) and returns
    ``NotImplemented`` for inputs it does not serve. ``.generic`` is the
    undecorated kernel.
    """

    def decorate(generic: F) -> F:
        @functools.wraps(generic)
        def dispatch(*args: Any, xp: Namespace, **kwargs: Any) -> Any:
            fast = fast_path(kernel, xp)
            if fast is not None:
                result = fast(*args, xp=xp, **kwargs)
                if result is not NotImplemented:
                    return result
            return generic(*args, xp=xp, **kwargs)

        dispatch.generic = generic  # type: ignore[attr-defined]
        dispatch.kernel = kernel  # type: ignore[attr-defined]
        return dispatch  # type: ignore[return-value]

    return decorate

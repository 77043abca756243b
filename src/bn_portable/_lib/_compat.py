"""The single place that imports array-api-compat.

Installed normally (``import bn_portable``), this is the global
``array_api_compat``. A library that vendors bn_portable as
``yourlib._vendor.bn_portable`` supplies its own copy, looked up beside
bn_portable, in this order:

1. a module ``yourlib._vendor._array_api_compat_vendor`` that re-exports the
   array-api-compat the vendoring library uses (the hook array-api-extra and
   SciPy also read), so that one copy serves both libraries;
2. a package ``yourlib._vendor.array_api_compat`` (array-api-compat vendored
   beside bn_portable).

A vendored copy never falls back to a globally installed array-api-compat:
that one could be another version than the one the vendoring library tested
with. Without either module the import fails, saying what to add.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: ``bn_portable``, or ``yourlib._vendor.bn_portable`` in a vendored copy.
_PACKAGE = __name__.rsplit(".", 2)[0]
#: The package holding a vendored copy (``yourlib._vendor``); empty when installed.
_PARENT = _PACKAGE.rpartition(".")[0]
_CANDIDATES = ("_array_api_compat_vendor", "array_api_compat")


def _load() -> ModuleType:
    if not _PARENT:
        return importlib.import_module("array_api_compat")
    for candidate in _CANDIDATES:
        name = f"{_PARENT}.{candidate}"
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
    raise ImportError(
        f"{_PACKAGE} is a vendored copy of bn_portable and found no array-api-compat beside it: "
        f"add a module {_PARENT}._array_api_compat_vendor that re-exports your array-api-compat, "
        f"or vendor array-api-compat as {_PARENT}.array_api_compat "
        "(a vendored copy does not use a globally installed one)"
    )


_compat = _load()

# torch.compile traces through these helpers, and Dynamo warns once per call
# site of each functools.lru_cache'd function it traces: array-api-compat caches
# four namespace predicates and the type checks inside array_namespace, device
# and is_array_api_obj. The predicates below compare the module's name as
# array-api-compat's do, without a cache (a set lookup is as fast as the
# cache's); for PyTorch tensors the other three answer directly, as
# array-api-compat would, and never reach its cached checks.

#: array-api-compat's own package (``array_api_compat``, or a vendoring library's
#: copy behind the hook), whose wrapper namespaces are ``<package>.numpy`` etc.
_COMPAT_PACKAGE = _compat.array_namespace.__module__.removesuffix(".common._helpers")


def _named(library: str) -> Callable[[Any], bool]:
    """Whether a namespace is ``library`` or array-api-compat's wrapper of it."""
    names = frozenset({library, f"{_COMPAT_PACKAGE}.{library}"})

    def is_namespace(xp: Any) -> bool:
        return xp.__name__ in names

    return is_namespace


is_array_api_strict_namespace = _compat.is_array_api_strict_namespace  # not cached
is_jax_namespace = _compat.is_jax_namespace  # not cached
is_cupy_namespace = _named("cupy")
is_dask_namespace = _named("dask.array")
is_numpy_namespace = _named("numpy")
is_torch_namespace = _named("torch")


def array_namespace(*arrays: Any, **options: Any) -> Any:
    """array-api-compat's ``array_namespace``; a plain NumPy array or PyTorch tensor answered directly.

    The direct answers are what array-api-compat gives for those types (its
    wrapper namespace, imported by the first call), without its cached checks.
    """
    if len(arrays) == 1 and not options:
        found = _direct_namespace(arrays[0])
        if found is not None:
            return found
    return _compat.array_namespace(*arrays, **options)


def _direct_namespace(array: Any) -> Any:
    numpy = sys.modules.get("numpy")
    if numpy is not None and type(array) is numpy.ndarray:
        return sys.modules.get(_COMPAT_PACKAGE + ".numpy")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(array, torch.Tensor):
        return _torch_wrapper()
    return None


def _torch_wrapper() -> ModuleType:
    """array-api-compat's PyTorch namespace, imported by the first call.

    An import statement, which the compiler traces even where a compiled function
    makes the first call of the process (a ``sys.modules`` lookup that finds nothing
    and an import that then adds the module fail the compiler's own guard). A
    vendored copy's array-api-compat has no fixed name: looked up, imported by name
    (which the compiler cannot trace) only where no call has imported it yet.
    """
    if _PARENT:
        found = sys.modules.get(_COMPAT_PACKAGE + ".torch")
        return found if found is not None else importlib.import_module(_COMPAT_PACKAGE + ".torch")
    import array_api_compat.torch

    return array_api_compat.torch


def device(x: Any) -> Any:
    """array-api-compat's ``device``; a PyTorch tensor's and a plain NumPy array's answered directly."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.device
    numpy = sys.modules.get("numpy")
    if numpy is not None and type(x) is numpy.ndarray:
        return "cpu"
    return _compat.device(x)


def is_array_api_obj(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return (torch is not None and isinstance(x, torch.Tensor)) or bool(_compat.is_array_api_obj(x))


__all__ = [
    "array_namespace",
    "device",
    "is_array_api_obj",
    "is_array_api_strict_namespace",
    "is_cupy_namespace",
    "is_dask_namespace",
    "is_jax_namespace",
    "is_numpy_namespace",
    "is_torch_namespace",
]

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
from types import ModuleType

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

array_namespace = _compat.array_namespace
device = _compat.device
is_array_api_obj = _compat.is_array_api_obj
is_array_api_strict_namespace = _compat.is_array_api_strict_namespace
is_cupy_namespace = _compat.is_cupy_namespace
is_dask_namespace = _compat.is_dask_namespace
is_jax_namespace = _compat.is_jax_namespace
is_numpy_namespace = _compat.is_numpy_namespace
is_torch_namespace = _compat.is_torch_namespace

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

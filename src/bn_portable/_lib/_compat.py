"""The single place that imports array-api-compat.

A library that vendors bn_portable (``yourlib._vendor.bn_portable``) can put a
module ``_array_api_compat_vendor`` beside it that re-exports its own (vendored)
array-api-compat; it is tried first, exactly as array-api-extra and SciPy do, so
that one copy of array-api-compat serves both libraries.
"""

try:  # the parent package of a vendored copy supplies its own array-api-compat
    from ..._array_api_compat_vendor import (  # type: ignore[import-not-found]
        array_namespace,
        device,
        is_array_api_obj,
        is_array_api_strict_namespace,
        is_cupy_namespace,
        is_dask_namespace,
        is_jax_namespace,
        is_numpy_namespace,
        is_torch_namespace,
    )
except ImportError:
    from array_api_compat import (
        array_namespace,
        device,
        is_array_api_obj,
        is_array_api_strict_namespace,
        is_cupy_namespace,
        is_dask_namespace,
        is_jax_namespace,
        is_numpy_namespace,
        is_torch_namespace,
    )

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

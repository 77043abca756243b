"""Where TensorFlow's graph blocks gradients, block them on autodiff backends too.

The array API has no ``stop_gradient``; PyTorch and JAX are the libraries here
with autodiff, so they get their own, and every other library needs none.
"""

from __future__ import annotations

from typing import Any

from ._compat import is_jax_namespace, is_torch_namespace


def stop_gradient(array: Any, xp: Any) -> Any:
    """``array`` as a constant for PyTorch autograd and JAX transformations."""
    if array is None:
        return None
    if is_torch_namespace(xp):
        return array.detach()
    if is_jax_namespace(xp):
        import jax

        return jax.lax.stop_gradient(array)
    return array

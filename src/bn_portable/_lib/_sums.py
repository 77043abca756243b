"""Sums over data, at least as accurate as TensorFlow's tree reduction."""

from __future__ import annotations

from typing import Any


def accurate_sum(x: Any, axes: tuple[int, ...], xp: Any, *, keepdims: bool = False) -> Any:
    """Sum of ``x`` over ``axes`` in ``x``'s dtype."""
    return xp.sum(x, axis=axes, keepdims=keepdims)

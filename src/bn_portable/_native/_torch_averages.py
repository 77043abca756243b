"""PyTorch's moving average, ``v − (v − value)·a``, in one operation (two for a decay
under one half) instead of TensorFlow's three.

``torch.lerp(v, value, a)`` computes ``v + a·(value − v)`` for ``a < 0.5`` as one
fused multiply-add of the rounded difference (PyTorch's kernel; ``value − v`` is
``−(v − value)`` exactly), and ``torch.sub(v, d, alpha=a)`` computes ``v − a·d`` the
same way for the rarer ``a ≥ 0.5`` (a decay under one half), where lerp switches
to another formula. One rounding where TensorFlow's ``v − round(d·a)`` rounds twice,
so never further from the exact update (the accuracy contract). A training call
moves two ``[C]`` averages, and at small sizes each PyTorch operation costs
microseconds of dispatch whatever its arithmetic: one lerp took 2.4 µs against
4.0 µs for the subtraction pair and 6 µs for TensorFlow's three operations
(32 channels, 2 cores). Eagerly, for float32 and float64 variables with the weight
as a Python number; half-precision variables (a 0-d weight) and the compiler take
the generic kernel.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._lib._typing import Namespace

_DTYPES = (torch.float32, torch.float64)


def move_toward(variable: Tensor, value: Tensor, weight: Any, *, xp: Namespace) -> Any:
    """The generic ``variable − (variable − value)·weight`` with the product and the
    subtractions one operation."""
    if type(weight) is not float or variable.dtype not in _DTYPES or torch.compiler.is_compiling():
        return NotImplemented
    return lerp_toward(variable, value, weight)


def lerp_toward(variable: Tensor, value: Tensor, weight: float) -> Tensor:
    """``move_toward``'s arithmetic, unchecked: eagerly, float32 or float64 variables, a
    Python float weight."""
    if 0.0 <= weight < 0.5:  # lerp's own formula there: start + weight·(end − start)
        return torch.lerp(variable, value, weight)
    return torch.sub(variable, torch.sub(variable, value), alpha=weight)

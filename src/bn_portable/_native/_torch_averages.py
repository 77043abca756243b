"""PyTorch's moving average, ``v − (v − value)·a``, in two operations instead of three.

``torch.sub(v, d, alpha=a)`` computes ``v − a·d`` in one operation, as one fused
multiply-add on CPU: one rounding where TensorFlow's ``v − round(d·a)`` rounds
twice, so never further from the exact update (the accuracy contract). A training
call moves two ``[C]`` averages, and at small sizes each PyTorch operation costs
microseconds of dispatch whatever its arithmetic: the pair took half as long
(512 channels, 2 cores). Eagerly, for float32 and float64 variables with the
weight as a Python number; half-precision variables (a 0-d weight) and the
compiler take the generic kernel.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._lib._typing import Namespace

_DTYPES = (torch.float32, torch.float64)


def move_toward(variable: Tensor, value: Tensor, weight: Any, *, xp: Namespace) -> Any:
    """The generic ``variable − (variable − value)·weight`` with the product and the
    subtraction one operation."""
    if type(weight) is not float or variable.dtype not in _DTYPES or torch.compiler.is_compiling():
        return NotImplemented
    return torch.sub(variable, torch.sub(variable, value), alpha=weight)

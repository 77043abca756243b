"""Shared input and state of the ``bn_portable.torch`` module tests (``test_torch_module*.py``)."""

from __future__ import annotations

import torch


def _input(shape=(4, 3, 5, 6), seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * 2 + 0.5).to(dtype)


def _perturb(module, seed=1):
    """Non-default parameters and statistics, so that copying them is observable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(0.3 * torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype))
    return module

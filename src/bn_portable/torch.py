"""``bn_portable.torch``: TensorFlow's batch-norm layer as a PyTorch ``nn.Module``.

``BatchNorm`` holds the layer's variables the PyTorch way (parameters ``beta``
and ``gamma``, or ``None``; buffers named as TensorFlow names them), validates
its options once, in ``__init__``, and runs one step of TensorFlow's layer with
them in ``forward`` (``bn_portable.batch_norm``'s numbers); ``train()`` and
``eval()`` select ``is_training``. Conversions: ``BatchNorm.from_torch``,
``BatchNorm.from_state`` and ``.to_torch`` (the functions ``from_torch`` and
``to_torch`` call them), and ``convert_batch_norms`` for every batch norm of a
model at once (with a ``ConversionReport`` of what it did).

Importing this module imports PyTorch; ``import bn_portable`` does not.
See docs/torch.md for state_dict, torch.compile, autocast and DDP.
"""

from __future__ import annotations

from torch import nn

# The public facade: the class and the whole-model conversion live in modules of
# their own (_torch_convert builds BatchNorm modules, and this module re-exports
# both, which one module importing the other would make a cycle).
from ._torch_convert import ConversionReport, ConvertedBatchNorm, convert_batch_norms
from ._torch_fold import KeptBatchNorm, fold_batch_norms, fold_into
from ._torch_module import BatchNorm
from ._torch_widen import WidenedChannels


def from_torch(module: nn.Module) -> BatchNorm:
    """A ``BatchNorm`` from a ``torch.nn.BatchNorm1d/2d/3d``: ``BatchNorm.from_torch(module)``."""
    return BatchNorm.from_torch(module)


def to_torch(module: BatchNorm, kind: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """The ``torch.nn.BatchNorm1d/2d/3d`` equivalent of a ``BatchNorm``: ``module.to_torch(kind)``."""
    if not isinstance(module, BatchNorm):
        raise TypeError(f"module must be a bn_portable.torch.BatchNorm, got {type(module).__name__}")
    return module.to_torch(kind)


__all__ = [
    "BatchNorm", "ConversionReport", "ConvertedBatchNorm", "KeptBatchNorm", "WidenedChannels",
    "convert_batch_norms", "fold_batch_norms", "fold_into", "from_torch", "to_torch",
]

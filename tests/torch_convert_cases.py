"""Shared models, layers and checks of the ``convert_batch_norms`` tests (``test_torch_convert*.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bn_portable.porting import load_keras_batch_norm
from bn_portable.torch import convert_batch_norms

nn = torch.nn
DATA = Path(__file__).parent / "data" / "porting"
KERAS_LAYERS = json.loads((DATA / "manifest.json").read_text())["keras_layers"]


def _torch_batch_norms(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _keras_batch_norms():
    pytest.importorskip("h5py", reason="reading Keras files needs h5py (the h5py extra)")
    return {layer: load_keras_batch_norm(DATA / "keras_model.keras", layer) for layer in KERAS_LAYERS}


class KerasPort(nn.Module):
    """The batch norms of tests/data/porting's Keras model, as a PyTorch port holds them."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))  # bn_conv (NHWC in Keras)
        self.bn_nchw = nn.BatchNorm2d(3)
        self.bn_renorm = nn.BatchNorm2d(3)
        self.head = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5))  # bn_dense
        self.inner = nn.Sequential(nn.BatchNorm2d(3))  # bn_inner, in a nested Keras model


KERAS_PORT_NAMES = {
    "stem.1": "bn_conv", "bn_nchw": "bn_nchw", "bn_renorm": "bn_renorm", "head.1": "bn_dense",
    "inner.0": "bn_inner",
}


def _problem(model, *args, match, **kwargs):
    with pytest.raises(ValueError, match=match):
        convert_batch_norms(model, *args, **kwargs)

"""Shared data and checks of the ``mask=`` tests (``test_mask*.py``)."""

from __future__ import annotations

import numpy as np


def _channel(shape, options):
    return 1 if options.get("data_format") == "NCHW" else len(shape) - 1


def _data(shape, options, *, seed=0, keep=0.6, offset=20.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * np.linspace(0.5, 3.0, shape[_channel(shape, options)]).reshape(
        [-1 if a == _channel(shape, options) else 1 for a in range(len(shape))]
    ) + offset)
    mask_shape = tuple(n for a, n in enumerate(shape) if a != _channel(shape, options))
    mask = rng.random(mask_shape) < keep
    mask.flat[0] = True  # at least one element counts
    return x, mask


def _masked_truth(x, mask, channel):
    """float64 mean and biased variance over every axis but ``channel``, counting ``mask``."""
    x = np.asarray(x, np.float64)
    weights = np.broadcast_to(np.expand_dims(mask.astype(np.float64), channel), x.shape)
    axes = tuple(a for a in range(x.ndim) if a != channel)
    total = weights.sum(axes)
    shape = [-1 if a == channel else 1 for a in range(x.ndim)]
    mean = np.divide((weights * x).sum(axes), total, out=np.zeros_like(total), where=total > 0)
    centered = x - mean.reshape(shape)
    variance = np.divide(
        (weights * centered**2).sum(axes), total, out=np.zeros_like(total), where=total > 0
    )
    return mean, variance


def _close(actual, expected, rtol, label=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (label, actual.shape, expected.shape)
    scale = np.maximum(np.abs(expected), 1.0)
    error = float(np.max(np.abs(actual - expected) / scale)) if expected.size else 0.0
    assert error <= rtol, f"{label}: {error:.3g} > {rtol}"

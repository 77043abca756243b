"""Shared input of the ``bn_portable.flax`` tests (``test_flax_module*.py``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _input(shape=(4, 5, 6, 3), seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return jnp.asarray((rng.normal(size=shape) * 2 + 0.5).astype(dtype))

"""``skip_nonfinite``: a training step whose batch statistics are not finite changes no state.

One batch holding an inf or a NaN (an overflow upstream, a corrupt sample)
makes its mean or variance non-finite, and TensorFlow's moving averages then
stay NaN for the rest of the run. With ``batch_norm(..., skip_nonfinite=True)``
(and ``batch_norm_vjp``) such a step leaves every moving statistic where it was
(the zero-debias average and step, the renorm statistics too) and adds one to
``state.skipped_steps``, an int32 scalar that exists only with the option. The
step's ``y`` is still computed from the batch, as without the option.

The decision is data, not Python control flow: a 0-d boolean from
``isfinite`` selects, with ``where``, between the updated and the old value of
each field. So it traces under ``jax.jit`` and ``torch.compile``, stays lazy
on Dask and never reads a value back to the host.
"""

from __future__ import annotations

from typing import Any

from .._lib._typing import Namespace
from ._fields import COUNTER


def batch_is_finite(mean: Any, variance: Any, xp: Namespace) -> Any:
    """A 0-d boolean array: every channel's batch mean and variance is finite."""
    return xp.logical_and(xp.all(xp.isfinite(mean)), xp.all(xp.isfinite(variance)))


def keep_state_unless_finite(
    state: Any, new_state: Any, mean: Any, variance: Any, xp: Namespace
) -> Any:
    """``new_state`` where the batch statistics are finite, else ``state`` with one more skip."""
    finite = batch_is_finite(mean, variance, xp)
    kept = {
        field: xp.where(finite, getattr(new_state, field), getattr(state, field))
        for field in new_state._fields
        if field != COUNTER
        and getattr(new_state, field) is not None
        and getattr(new_state, field) is not getattr(state, field)
    }
    counter = getattr(state, COUNTER)
    skipped = xp.astype(xp.logical_not(finite), counter.dtype)  # 1 or 0, on counter's device
    return new_state._replace(**kept, **{COUNTER: counter + skipped})

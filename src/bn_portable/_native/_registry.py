"""The kernels a library's fast path may replace, by name of concept rather than of function.

A generic kernel declares which ``Kernel`` it is (``@overridable(Kernel.X)``);
a fast-path module lists what it serves in ``KERNELS``. Neither side names
the other's functions, so renaming either cannot silently disconnect them, and
a test checks that every fast path takes its generic kernel's parameters.
"""

from __future__ import annotations

import enum


class Kernel(enum.Enum):
    """One replaceable kernel; the value documents its signature."""

    FUSED_TRAINING = "fused_training_core(x, scale, offset, epsilon, channel, *, xp)"
    FUSED_INFERENCE = "fused_inference(x, scale, offset, mean, variance, epsilon, channel, *, xp)"
    LOCAL_MOMENTS = "local_moments(x, axes, *, xp, compute=None) -> (mean, m2)"
    WEIGHTED_MOMENTS = (
        "weighted_local_moments(x, axes, weights, empty, *, xp, compute=None) -> (count, mean, m2)"
    )
    NORMALIZE = (
        "normalize(x, mean, variance, offset, scale, variance_epsilon, *, xp, compute=None, channel=None)"
    )
    GRADIENT_SUMS = "gradient_sums(dy, x, mean, channel, *, xp)"
    GRADIENT_INPUT = "gradient_input(dy, x, mean, a, b, c, share, *, xp)"
    MOVE_TOWARD = "move_toward(variable, value, weight, *, xp)"
    LAYER_TRAINING = (
        "layer_training(x, moving_mean, moving_variance, offset, scale, variance_epsilon, weight, axes,"
        " channel, *, xp, compute=None, reducer=None) -> (y, mean, variance, new_mean, new_variance)"
    )
    FUSED_LAYER_TRAINING = (
        "fused_layer_training(x, moving_mean, moving_variance, offset, scale, epsilon, weight, channel,"
        " *, xp) -> (y, mean, biased_variance, new_mean, new_variance)"
    )

    # Every kernel call looks its fast path up by member: Enum's own __hash__ (hashing the
    # name in Python) took 150 of the lookup's 250 ns on 2 CPU cores. Members are
    # singletons compared by identity, so the identity hash agrees with equality.
    __hash__ = object.__hash__

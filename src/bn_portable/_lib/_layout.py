"""Where the channels are: data formats, reduction axes and parameter broadcasting."""

from __future__ import annotations

from typing import Any

from ._typing import Namespace

#: Channel position of every data format TensorFlow's fused kernel accepts.
FUSED_CHANNEL_AXIS = {"NHWC": -1, "NDHWC": -1, "NCHW": 1, "NCDHW": 1}

#: The rank each fused data format takes (TensorFlow rejects a mismatch).
FUSED_RANK = {"NHWC": 4, "NCHW": 4, "NDHWC": 5, "NCDHW": 5}

#: Data formats of ``batch_norm`` (tf.contrib / tf_slim), for every rank 2 to 5.
LAYER_DATA_FORMATS = ("NHWC", "NCHW")


def fused_channel_axis(x: Any, data_format: str) -> int:
    """Validate ``data_format`` against ``x``'s rank for the fused kernel; its channel axis."""
    if data_format not in FUSED_RANK:
        raise ValueError(
            f"data_format must be one of {', '.join(map(repr, FUSED_RANK))}; got {data_format!r}"
        )
    rank = FUSED_RANK[data_format]
    if x.ndim != rank:
        raise ValueError(
            f"x must have rank {rank} for data_format {data_format!r} "
            f"(TensorFlow's fused kernel rejects the mismatch); got shape {tuple(x.shape)}"
        )
    return channel_axis(data_format, rank)


def channel_axis(data_format: str, rank: int) -> int:
    """Non-negative index of the channel axis for ``data_format`` at ``rank``."""
    return FUSED_CHANNEL_AXIS[data_format] % rank


def reduction_axes(rank: int, channel: int) -> tuple[int, ...]:
    """Every axis but the channel axis: the batch statistics' axes."""
    return tuple(axis for axis in range(rank) if axis != channel)


def elements_per_channel(x: Any, channel: int) -> int:
    """n of the batch statistics: the product of every length but the channel's."""
    count = 1
    for axis in reduction_axes(x.ndim, channel):
        count *= x.shape[axis]
    return count


def per_channel(array: Any, rank: int, channel: int, xp: Namespace) -> Any:
    """A ``[C]`` parameter shaped to broadcast against an input of ``rank``.

    Trailing channels broadcast as they are; any other position is reshaped
    to ``[1, C, 1, ...]`` as TensorFlow does for NCHW.
    """
    if channel == rank - 1 or array.ndim != 1:
        return array
    shape = [1] * rank
    shape[channel] = array.shape[0]
    return xp.reshape(array, tuple(shape))

"""Type aliases of the public API.

``ArrayT`` ties what a function returns to the array type that went in: a NumPy
array in, a NumPy array out; a ``torch.Tensor`` in, a ``torch.Tensor`` out; the
same for CuPy, JAX, Dask and array-api-strict arrays. A type checker sees the
class of the input only: a NumPy array typed with its shape and dtype (as
``np.zeros((2, 3), np.float16)`` is) comes back typed with the same ones, even
where a reduction drops axes or a statistic is computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Literal, Protocol, TypeAlias, TypeVar


class Array(Protocol):
    """What every supported array has (the array API standard's attributes used here)."""

    @property
    def shape(self) -> Any: ...

    @property
    def ndim(self) -> int: ...

    @property
    def dtype(self) -> Any: ...


#: An array of any supported library; the outputs are of the same type.
ArrayT = TypeVar("ArrayT", bound=Array)

#: An array-API namespace (array-api-compat's wrapper of a library, or the library).
Namespace: TypeAlias = ModuleType

#: Where a kernel's arrays live (``array_api_compat.device``), or None for traced JAX arrays.
Device: TypeAlias = Any

#: How a mean (and variance) is divided by the count: ``tf.nn.moments``' ``sum / n``,
#: or the fused kernel's ``sum × float32(1/n)``.
Rounding: TypeAlias = Literal["divide", "reciprocal"]

#: What an empty batch's (or zero total weight's) statistics are: NaN as TensorFlow's
#: ``0 / 0``, or 0 as its ``div_no_nan`` (weighted moments, mergeable summaries).
EmptyStatistics: TypeAlias = Literal["nan", "zero"]

#: One axis or several, as ``tf.nn.moments`` takes them (negative axes count from the end).
Axes = int | Sequence[int]

#: ``cross_replica_sum``: sums an array over every replica (see ``bn_portable.distributed``).
CrossReplicaSum = Callable[[Any], Any]

#: ``vjp(dy) -> (dx, dgamma, dbeta)``; ``dgamma`` is None when ``scale=False``,
#: ``dbeta`` when ``center=False``.
VJP = Callable[[ArrayT], tuple[ArrayT, ArrayT | None, ArrayT | None]]

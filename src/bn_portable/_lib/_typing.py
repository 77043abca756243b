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
from typing import Any, Protocol, TypeVar


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

#: One axis or several, as ``tf.nn.moments`` takes them (negative axes count from the end).
Axes = int | Sequence[int]

#: ``cross_replica_sum``: sums an array over every replica (see ``bn_portable.distributed``).
CrossReplicaSum = Callable[[Any], Any]

#: ``vjp(dy) -> (dx, dgamma, dbeta)``; ``dgamma`` is None when ``scale=False``,
#: ``dbeta`` when ``center=False``.
VJP = Callable[[ArrayT], tuple[ArrayT, ArrayT | None, ArrayT | None]]

"""``accurate_sum``: every generic reduction over data goes through here.

A batch statistic is a sum over up to millions of elements, and how a library
adds them decides how much of the variance survives when |mean| ≫ σ. Measured
on float32 (31, 16, 16, 8) with mean 12345.678 and σ = 1, two-pass variance
against float64 (``benchmarks/robustness.py`` has the full table):

- NumPy (and array-api-strict and Dask, which call NumPy on each block) adds the
  outer axes of a reduction as one running sum per output element: 32 % off.
  Only a reduction along the contiguous inner axis is pairwise.
- PyTorch's CPU sum is a cascade sum: 2e-6. CUDA reductions (PyTorch, CuPy)
  are tree-shaped (not measured here: no GPU on the machines this ran on).
- JAX (XLA on CPU, eagerly and under ``jax.jit``) is tree-like too: 1.5e-6.
  Half-precision sums accumulate in float32 in PyTorch and JAX.
- TensorFlow's own tree reduction, the reference: 3e-5 to 6e-4 at |mean|/σ =
  1e4 (per case in ``docs/robustness.md``, from the ``ill_conditioned`` goldens).

So only the NumPy-like namespaces need help, and they get the cheapest help:

- float32, float16 and bfloat16 are summed through the standard ``dtype=``
  argument into a float64 accumulator and rounded once to x's dtype. NumPy
  casts in small buffers (no input-sized temporary), Dask does it per block
  and stays lazy; the running float64 sum of float32 values loses nothing
  that the final rounding keeps for any realistic size (n·2⁻⁵³ ≪ 2⁻²⁴).
- float64 has no wider type, so large float64 reductions are split in halves
  along their longest reduced axis (views, no copies) until a block has at
  most ``_LEAF`` elements: a pairwise sum of running sums, error of order
  (``_LEAF`` + log n)·2⁻⁵³ instead of n·2⁻⁵³. The split depends on the shape
  only. On Dask the same split runs inside each block (``dask.array.reduction``,
  one task per block as for a plain sum), and Dask adds the blocks' partial
  sums as a tree. The blocks are summed with their own library (NumPy, or
  CuPy for a GPU-backed Dask array).

Everything else (PyTorch, JAX, CuPy, unknown namespaces) calls ``xp.sum`` as
it is: already accurate, traceable under ``jax.jit`` and ``torch.compile``, and
free. Except while ``torch.compile`` traces: PyTorch's sums then become the
compiler's own generated reductions, several ε off where the eager cascade sum
is within one (the two-pass variance of a 16×8×64×64 float32 batch with
|mean| = 10⁴σ: 212 ε against 16 eagerly), so half and float32 sums are widened
to float64 there too. No branch looks at values, only at the namespace, dtype,
shape and whether the compiler is tracing.
"""

from __future__ import annotations

from typing import Any

from ._backends import Summation, block_namespace, compiling, summation
from ._dtypes import dtype_name
from ._typing import Namespace

#: Largest float64 block summed as one running sum on the NumPy-like namespaces.
_LEAF = 4096

#: Dtypes summed into a float64 accumulator where the library's own sums need help.
_WIDENED = ("float32", "float16", "bfloat16")


def accurate_sum(x: Any, axes: tuple[int, ...], xp: Namespace, *, keepdims: bool = False) -> Any:
    """The sum of ``x`` over ``axes`` in x's dtype, at least as accurate as TensorFlow's.

    ``axes`` are non-negative and distinct. See the module docstring for what
    each namespace does; the result is what ``xp.sum(x, axis=axes,
    keepdims=keepdims)`` would be, with fewer rounding errors.
    """
    strategy = summation(xp)
    if not axes or (strategy is Summation.NATIVE and not compiling(xp)):
        return xp.sum(x, axis=axes, keepdims=keepdims)
    name = dtype_name(x.dtype)
    if name in _WIDENED:
        total = xp.sum(x, axis=axes, keepdims=keepdims, dtype=xp.float64)
        return xp.astype(total, x.dtype)
    if name == "float64" and strategy is Summation.WIDEN:
        total = _pairwise(x, axes, xp)
        return total if keepdims else xp.squeeze(total, axis=axes)
    if name == "float64" and strategy is Summation.WIDEN_PER_BLOCK:
        return _dask_pairwise(x, axes, keepdims)
    return xp.sum(x, axis=axes, keepdims=keepdims)


def _dask_pairwise(x: Any, axes: tuple[int, ...], keepdims: bool) -> Any:
    """A lazy float64 Dask sum whose per-block sums are ``_pairwise``."""
    import dask.array  # optional: only a Dask namespace gets here

    block_xp = block_namespace(x)

    def block_sum(block: Any, axis: Any, keepdims: Any) -> Any:
        total = _pairwise(block, tuple(axis), block_xp)
        return total if keepdims else block_xp.squeeze(total, axis=axis)

    return dask.array.reduction(
        x, block_sum, block_sum, axis=axes, keepdims=keepdims, dtype=x.dtype,
        name="accurate-sum",
    )


def _pairwise(x: Any, axes: tuple[int, ...], xp: Namespace) -> Any:
    """Keepdims sum of a float64 ``x`` over ``axes``: halves until a block is small."""
    count = 1
    for axis in axes:
        count *= x.shape[axis]
    if count <= _LEAF:
        return xp.sum(x, axis=axes, keepdims=True)
    axis = max(axes, key=lambda a: x.shape[a])
    half = x.shape[axis] // 2
    before = (slice(None),) * axis
    low = x[(*before, slice(0, half), ...)]
    high = x[(*before, slice(half, None), ...)]
    return _pairwise(low, axes, xp) + _pairwise(high, axes, xp)

"""Every fact about one array library that the rest of the package needs, in one place.

Only here do library names appear outside the fast paths (and ``_compat``,
which answers array-api-compat's questions directly for NumPy arrays and
PyTorch tensors): how each library's sums round (and so what ``accurate_sum``
must do), which arrays are not plain dense arrays, how to stop a gradient,
whether PyTorch's compiler is tracing, how XLA divides, what keeps XLA from
merging two equal subtractions (``optimization_barrier``), what a Dask array's
blocks are, what describes an array completely enough for the call cache, and
which operand PyTorch combines with a Python number quickest. Each answer depends
on types and metadata, never on values.
"""

from __future__ import annotations

import enum
import sys
from typing import Any

from ._compat import (
    array_namespace,
    is_array_api_strict_namespace,
    is_cupy_namespace,
    is_dask_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)
from ._typing import Namespace


class Summation(enum.Enum):
    """How ``accurate_sum`` gets a sum at least as accurate as TensorFlow's from a library."""

    #: NumPy-like (NumPy, array-api-strict): running sums across outer axes, so
    #: float32 and half are summed into float64 and float64 is split pairwise.
    WIDEN = "widen"
    #: Dask: the same, block by block with the blocks' own library.
    WIDEN_PER_BLOCK = "widen per block"
    #: PyTorch, JAX, CuPy and others: their own tree or cascade sums are accurate.
    NATIVE = "native"


def library_name(xp: Namespace) -> str:
    """``torch`` for array_api_compat.torch, and so on, for messages.

    Asked of array-api-compat rather than read off the module's name, so that a
    vendored copy (``yourlib._vendor.array_api_compat.numpy``) still names NumPy.
    """
    for is_namespace, name in (
        (is_numpy_namespace, "numpy"),
        (is_cupy_namespace, "cupy"),
        (is_torch_namespace, "torch"),
        (is_jax_namespace, "jax"),
        (is_dask_namespace, "dask"),
        (is_array_api_strict_namespace, "array_api_strict"),
    ):
        if is_namespace(xp):
            return name
    module_name: str = xp.__name__
    return module_name.rpartition("array_api_compat.")[2].removesuffix(".array").split(".")[0]


#: ``summation``'s answers by namespace name: every generic sum asks.
_SUMMATION: dict[str, Summation] = {}


def summation(xp: Namespace) -> Summation:
    """The summation strategy of ``xp`` (a pure function of the namespace, remembered by name).

    A plain dictionary rather than ``functools.lru_cache``, which torch.compile
    warns about wherever it traces a call of one.
    """
    try:
        return _SUMMATION[xp.__name__]
    except KeyError:
        pass
    if is_numpy_namespace(xp) or is_array_api_strict_namespace(xp):
        strategy = Summation.WIDEN
    elif is_dask_namespace(xp):
        strategy = Summation.WIDEN_PER_BLOCK
    else:
        strategy = Summation.NATIVE
    _SUMMATION[xp.__name__] = strategy
    return strategy


def compiling(xp: Namespace) -> bool:
    """Whether PyTorch's compiler is tracing this call; only a PyTorch namespace asks PyTorch."""
    return is_torch_namespace(xp) and torch_compiling()


def torch_compiling() -> bool:
    """Whether PyTorch's compiler is tracing (False without PyTorch imported).

    For the places that run before any namespace is known (the options cache).
    """
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.compiler.is_compiling())


def divides_numbers_as_arrays(xp: Namespace) -> bool:
    """Whether ``array / n`` for a Python number n rounds as ``array / (an array of n)``.

    Not on JAX: XLA turns a division by a constant or a broadcast scalar into
    a product with its reciprocal, which rounds differently from a division by
    a full array. The moments kernel divides by a count that is a number on one
    path and an array on another, and the two must agree to the bit.
    """
    return not is_jax_namespace(xp)


def stop_gradient(array: Any, xp: Namespace) -> Any:
    """``array`` as a constant for PyTorch autograd and JAX transformations (None stays None)."""
    if array is None:
        return None
    if is_torch_namespace(xp):
        torch: Any = sys.modules["torch"]
        if not array.requires_grad and not torch._C._are_functorch_transforms_active():
            return array  # nothing records it: already a constant (a detach costs a small call microseconds)
        return array.detach()
    if is_jax_namespace(xp):
        import jax  # optional: only a JAX namespace gets here

        return jax.lax.stop_gradient(array)
    return array


def optimization_barrier(array: Any, xp: Namespace) -> Any:
    """``array`` as it is, except that XLA may not merge what is computed from it with an
    equal expression computed from the original (JAX's ``optimization_barrier``; other
    libraries get ``array`` back).

    For a mean that both statistics and y subtract from x: XLA merges the two ``x − mean``
    into one, and as its reduction fusion then takes it from memory, writes it out and
    reads it back, a whole pass more over an input-sized array (TensorFlow's fused
    training step at 32×56×56×64 float32 under ``jit``, 2 CPU cores: a quarter less
    time with y's own subtraction).
    Only tracers pass the barrier (under ``jit``, and eager ``grad`` or ``vmap``, where it
    changes nothing either): eagerly XLA merges nothing, and it would be one dispatch more.
    JAX differentiates and batches through it from 0.5.3 (the ``jax`` extra's floor).
    """
    if is_jax_namespace(xp):
        import jax  # optional: only a JAX namespace gets here

        if isinstance(array, jax.core.Tracer):
            return jax.lax.optimization_barrier(array)
    return array


def block_namespace(dask_array: Any) -> Namespace:
    """The namespace of a Dask array's blocks (NumPy, or CuPy for a GPU-backed array)."""
    blocks: Namespace = array_namespace(dask_array._meta)
    return blocks


def not_dense(value: Any) -> str | None:
    """Why ``value`` is not a plain dense array of its library, or None when it is.

    NumPy masked arrays (the mask would be honoured by some operations and not
    by others) and PyTorch tensors of a layout other than strided (sparse
    tensors have no dense elementwise kernels) are refused. Types and layouts only.
    """
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ma.MaskedArray):
        return "masked"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor) and value.layout != torch.strided:
        return f"layout {value.layout}"
    return None


def metadata(*arrays: Any, eager: bool = False) -> tuple[Any, ...] | None:
    """Everything the checks read of each array, as a hashable key; None if some array has none.

    Type, shape, dtype, and for PyTorch device and layout: every check of an
    argument is a function of these (the namespace follows from the type, a
    NumPy array lives on the CPU), so a check's outcome is a pure function of
    the key. Other array types (masked arrays, subclasses, JAX tracers, Dask,
    CuPy, array-api-strict) have no key here: their calls are checked in full
    every time. None also while PyTorch's compiler traces, where shapes may be
    symbolic and the checks are traced once per compiled graph instead (``eager=True``
    where the caller has asked already).
    """
    numpy = sys.modules.get("numpy")
    ndarray = None if numpy is None else numpy.ndarray
    torch: Any = sys.modules.get("torch")
    tensors = () if torch is None else (torch.Tensor, torch.nn.Parameter)
    parts: list[Any] = []
    asked_compiler = eager
    for array in arrays:
        if array is None:  # first: most of a state's fields are None
            parts.append(None)
            continue
        kind = type(array)
        if kind is ndarray:
            parts.append((kind, array.shape, array.dtype))
        elif kind in tensors:
            if not asked_compiler:
                if torch_compiling():
                    return None
                asked_compiler = True
            # torch.Size is a tuple: hashable and equal to the same shape as a tuple.
            parts.append((kind, array.shape, array.dtype, array.device, array.layout))
        else:
            return None
    return tuple(parts)


#: ``operand``'s 0-d CPU tensors by (number, dtype); never written after they are made.
_TORCH_NUMBERS: dict[tuple[float, Any], Any] = {}
#: Numbers remembered at most (a model's options and batch sizes give a few dozen).
_TORCH_NUMBERS_CAPACITY = 256


def operand(number: Any, like: Any, *, eager: bool = False) -> Any:
    """``number`` as the quicker operand to combine with the array ``like``, for the same bits.

    PyTorch wraps a Python number in a new 0-d tensor and converts it to the other
    operand's dtype at every operation: about 4 µs each on a CPU, and a small training
    call makes six (ε, 1/n twice, the Bessel factor, the two moving averages' weight).
    For a plain float32 or float64 CPU tensor, eagerly, a 0-d tensor of its dtype
    holding the number, rounded once as PyTorch rounds it, gives the same bits in
    ``+``, ``−``, ``×`` and as a divisor (not as a dividend: PyTorch computes
    ``number / tensor`` as ``number · (1 / tensor)``); it is made once per (number,
    dtype), a pure function of them, and no caller writes to it. Everything else (other
    libraries, GPUs, half precision, subclasses, tracing, arrays as ``number``) gets
    ``number`` back. ``eager=True`` where the caller has asked the compiler already (a
    torch fast path asks once per call: the question is two Python calls, and a small
    training call would ask it at every operand).
    """
    torch: Any = sys.modules.get("torch")
    if type(number) not in (float, int) or torch is None:
        return number
    if type(like) not in (torch.Tensor, torch.nn.Parameter) or not like.is_cpu:
        return number
    if (not eager and torch.compiler.is_compiling()) or torch._C._len_torch_dispatch_stack():
        return number  # the compiler's constants, and fake or proxy tensors, take numbers
    key = (number, like.dtype)
    found = _TORCH_NUMBERS.get(key)
    if found is not None:  # only float32 and float64 are ever stored
        return found
    if like.dtype not in (torch.float32, torch.float64):
        return number
    with torch.inference_mode(False):  # an inference tensor could not be saved for backward
        made = torch.tensor(number, dtype=like.dtype)
    if len(_TORCH_NUMBERS) >= _TORCH_NUMBERS_CAPACITY:
        _TORCH_NUMBERS.clear()
    _TORCH_NUMBERS[key] = made
    return made

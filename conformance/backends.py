"""The array libraries the suite runs on, and how to move NumPy data in and out.

Shared by the conformance runner and the unit tests (``tests/conftest.py``),
so both always cover the same backends. A backend whose library is not
installed, or which needs a GPU that is not there, reports why it is absent.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import importlib.util
import shutil
import tempfile
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Backend:
    """One column of the conformance matrix."""

    name: str
    library: str
    #: Dtype names this backend can hold (array-api-strict has no float16).
    dtypes: tuple[str, ...]
    #: Run calls under ``jax.jit`` (the function is traced, not run eagerly).
    jit: bool = False
    #: Fast paths on (the default) or forced off.
    fast_paths: bool = True
    #: Extra labels, e.g. ``lazy`` for Dask (a call must not compute).
    traits: tuple[str, ...] = field(default_factory=tuple)

    @property
    def xp(self) -> Any:
        module = importlib.import_module(_NAMESPACES[self.library])
        return module

    def absent_reason(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        package = _PACKAGES[self.library]
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed"
        if self.library == "torch_cuda":
            import torch

            if not torch.cuda.is_available():
                return "no CUDA GPU visible to PyTorch"
        if self.library == "cupy":
            try:
                import cupy

                cupy.cuda.runtime.getDeviceCount()
            except Exception as error:  # CuPy raises its own CUDA errors here
                return f"no CUDA GPU visible to CuPy ({type(error).__name__})"
        return None

    def asarray(self, array: np.ndarray, dtype: str) -> Any:
        """``array`` (NumPy; bfloat16 data arrives as float32) on this backend as ``dtype``."""
        return _TO[self.library](np.asarray(array), dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        """A backend array as NumPy; bfloat16 comes back as float32 (exactly)."""
        if array is None:
            return None
        return _FROM[self.library](array)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Fast-path switch, and for Dask a scheduler that fails on any compute."""
        import bn_portable

        with contextlib.ExitStack() as stack:
            stack.enter_context(bn_portable.fast_paths(self.fast_paths))
            if "lazy" in self.traits:
                import dask

                stack.enter_context(dask.config.set(scheduler=_forbid_compute))
            yield

    def call(self, function: Callable[..., Any], *args: Any, static: Hashable | None = None) -> Any:
        """``function(*args)`` on this backend: jitted for JAX-jit, lazy-checked for Dask.

        ``static``, when given, names everything ``function`` depends on besides
        its arguments (its keywords, the case's options): calls with the same
        code and ``static`` then share one ``jax.jit`` callable, so JAX traces
        and compiles once per configuration and input shape instead of once
        per call. Without it every call is jitted afresh.
        """
        with self.context():
            if self.jit:
                return self._jitted(function, static)(*args)
            return function(*args)

    def _jitted(self, function: Callable[..., Any], static: Hashable) -> Callable[..., Any]:
        import jax

        if static is None:
            return jax.jit(function)
        key = (self.name, function.__code__, function.__defaults__, static)
        if key not in _JITTED:
            _JITTED[key] = jax.jit(function)
        return _JITTED[key]


#: ``jax.jit`` callables by backend, code, default arguments and static configuration.
_JITTED: dict[Hashable, Callable[..., Any]] = {}


@functools.cache
def _compile_each_program_once() -> None:
    """Give XLA a compilation cache for this process, unless one is configured.

    Golden cases that differ only in what the harness keys on (their data, the
    step of a sequence, the case file) lower to the same XLA program: under
    ``jax.jit`` the suite lowered 1814 programs of which 978 were distinct.
    JAX's compilation cache, keyed on the program and the compile options,
    compiles each distinct one once (the JAX-jit column alone, one worker,
    on 2 CPU cores: 374 and 379 s without, 261 and 255 s with it, runs taken
    in turn). JAX decides at its first compilation whether a cache is in use,
    so this runs before the harness's first JAX array. Every call is still
    traced and lowered afresh; only the compiled executable of an identical
    program is reused, and the outputs are the same bits as without the cache
    (compared on every output of the column). The cache lives in a temporary
    folder removed at exit.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    folder = tempfile.mkdtemp(prefix="bn-portable-xla-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    # Every program, however small and quick to compile: the default thresholds
    # skip the ones that take under a second, which is nearly all of them.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _forbid_compute(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a Dask array was computed inside a bn_portable call; calls must stay lazy")


_NAMESPACES = {
    "numpy": "array_api_compat.numpy",
    "array_api_strict": "array_api_strict",
    "torch": "array_api_compat.torch",
    "torch_cuda": "array_api_compat.torch",
    "jax": "jax.numpy",
    "dask": "array_api_compat.dask.array",
    "cupy": "array_api_compat.cupy",
}

_PACKAGES = {
    "numpy": "numpy",
    "array_api_strict": "array_api_strict",
    "torch": "torch",
    "torch_cuda": "torch",
    "jax": "jax",
    "dask": "dask",
    "cupy": "cupy",
}


def _to_numpy_backend(array, dtype):
    return array.astype(dtype, copy=True)


def _to_strict(array, dtype):
    import array_api_strict as xs

    return xs.asarray(array.astype(dtype, copy=True))


def _to_torch(device):
    def convert(array, dtype):
        import torch

        # np.ascontiguousarray would make a 0-d array 1-d (local_step is a scalar).
        tensor = torch.from_numpy(np.array(array, order="C", copy=True))
        return tensor.to(device=device, dtype=getattr(torch, dtype))

    return convert


def enable_jax_float64() -> None:
    """JAX keeps float64 off by default; the float64 cases need it on."""
    import jax

    jax.config.update("jax_enable_x64", True)


def _to_jax(array, dtype):
    import jax.numpy as jnp

    enable_jax_float64()
    _compile_each_program_once()  # before JAX's first compilation, which settles it

    return jnp.asarray(array, dtype=getattr(jnp, dtype))


def _to_dask(array, dtype):
    import dask.array as da

    # Two chunks along the batch axis, so reductions really combine partial results.
    chunks = tuple(max(1, (n + 1) // 2) if axis == 0 else max(n, 1) for axis, n in enumerate(array.shape))
    return da.from_array(array.astype(dtype, copy=True), chunks=chunks)


def _to_cupy(array, dtype):
    import cupy

    return cupy.asarray(array.astype(dtype))


def _from_torch(tensor):
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def _from_jax(array):
    if str(array.dtype) == "bfloat16":
        array = array.astype("float32")
    return np.asarray(array)


def _from_dask(array):
    # The graph bn_portable built, run in this thread: the same tasks on the same
    # blocks as the default threaded scheduler, so the same numbers, without a thread
    # pool's handoffs per compute (the whole Dask column alone: 109 s against 155 s,
    # 2 CPU cores).
    return np.asarray(array.compute(scheduler="synchronous"))


def _from_strict(array):
    return np.from_dlpack(array)


def _from_cupy(array):
    return array.get()


_TO = {
    "numpy": _to_numpy_backend,
    "array_api_strict": _to_strict,
    "torch": _to_torch("cpu"),
    "torch_cuda": _to_torch("cuda"),
    "jax": _to_jax,
    "dask": _to_dask,
    "cupy": _to_cupy,
}

_FROM = {
    "numpy": np.asarray,
    "array_api_strict": _from_strict,
    "torch": _from_torch,
    "torch_cuda": _from_torch,
    "jax": _from_jax,
    "dask": _from_dask,
    "cupy": _from_cupy,
}

_FLOATS = ("float16", "float32", "float64")

#: Every backend, in report order.
BACKENDS = (
    Backend("numpy", "numpy", _FLOATS),
    Backend("numpy-generic", "numpy", _FLOATS, fast_paths=False),
    Backend("array-api-strict", "array_api_strict", ("float32", "float64")),
    Backend("torch", "torch", (*_FLOATS, "bfloat16")),
    Backend("torch-generic", "torch", (*_FLOATS, "bfloat16"), fast_paths=False),
    Backend("jax", "jax", (*_FLOATS, "bfloat16")),
    Backend("jax-jit", "jax", (*_FLOATS, "bfloat16"), jit=True),
    Backend("dask", "dask", _FLOATS, traits=("lazy",)),
    Backend("cupy", "cupy", _FLOATS),
    Backend("torch-cuda", "torch_cuda", (*_FLOATS, "bfloat16")),
    Backend("torch-cuda-generic", "torch_cuda", (*_FLOATS, "bfloat16"), fast_paths=False),
)


def by_name(name: str) -> Backend:
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise KeyError(f"unknown backend {name!r}; known: {', '.join(b.name for b in BACKENDS)}")

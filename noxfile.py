"""Sessions: lint, tests (one per backend), numpy1, golden, conformance, bench, bench_tensorflow, gpu.

``nox`` with no arguments runs what CI runs: lint, the unit tests on every
backend, the NumPy tests and conformance again on NumPy 1.x, the golden check
(regenerates TensorFlow's outputs and compares them with the committed
goldens) and the conformance suite.
"""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["lint", "tests", "numpy1", "golden_check", "conformance"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

#: Every environment that installs PyTorch pins it: on the project's machines a
#: CPU build of 2.13.0 for Python 3.11 is provided locally, while an unpinned
#: ``torch`` (or another version) pulls a multi-GB CUDA build from PyPI.
TORCH = "torch==2.13.0"
PYTHON = "3.11"

#: What each backend's environment installs besides ``.[test]``.
BACKEND_PACKAGES = {
    "numpy": [],
    "array-api-strict": [".[array-api-strict]"],
    "torch": [],
    "jax": [".[jax]"],
    "dask": [".[dask]"],
    "cupy": [".[cupy]"],
    "torch-cuda": [],
}
GPU_BACKENDS = ("cupy", "torch-cuda")

#: The pytest ``--backend`` names each session covers (JAX also under jax.jit).
TEST_BACKENDS = {"jax": ["jax", "jax-jit"]}

#: TensorFlow's golden environment (shared/TF_REFERENCE.md): nothing else goes in it.
GOLDEN_PACKAGES = ["tensorflow-cpu==2.15.1", "tf-keras==2.15.1", "tf-slim==1.1.0", "numpy<2"]


def _skip_without_gpu(session: nox.Session, backend: str) -> None:
    if shutil.which("nvidia-smi") is None:
        session.skip(f"{backend} needs a CUDA GPU and this machine has none (nvidia-smi not found)")


#: Whether this machine has a CUDA GPU: the gpu session creates no environment without one.
HAS_GPU = shutil.which("nvidia-smi") is not None


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.5")
    session.run("ruff", "check", "src", "tests", "conformance", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
@nox.parametrize("backend", list(BACKEND_PACKAGES))
def tests(session: nox.Session, backend: str) -> None:
    """Unit tests on one backend, e.g. ``nox -s "tests(backend='torch')"``."""
    if backend in GPU_BACKENDS:
        _skip_without_gpu(session, backend)
    # PyTorch is in every session: the gradient tests use its autograd as a reference.
    session.install(TORCH, ".[test]", *BACKEND_PACKAGES[backend])
    selected = [f"--backend={name}" for name in TEST_BACKENDS.get(backend, [backend])]
    session.run("pytest", *selected, *session.posargs)


@nox.session(python=PYTHON)
def numpy1(session: nox.Session) -> None:
    """Unit tests and conformance on NumPy 1.x (TensorFlow 2.15, the reference, pins numpy < 2)."""
    session.install(TORCH, ".[test]", "numpy>=1.24,<2")
    session.run("pytest", "--backend=numpy", *session.posargs)
    session.run(
        "python", "-m", "conformance.run",
        "--backend=numpy", "--backend=numpy-generic", "--no-report",
    )


def _golden(session: nox.Session, arguments: list[str]) -> None:
    session.install(*GOLDEN_PACKAGES)
    session.run(
        "python", "-m", "conformance.generate", *arguments,
        env={"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@nox.session(python=PYTHON)
def golden(session: nox.Session) -> None:
    """Regenerate the goldens with TensorFlow (``-- --check`` compares instead)."""
    _golden(session, session.posargs)


@nox.session(python=PYTHON)
def golden_check(session: nox.Session) -> None:
    """Regenerate the goldens into a temporary folder; fail unless identical."""
    _golden(session, ["--check"])


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """Every golden case on every backend present, fast paths on and off; writes the report."""
    session.install(TORCH, ".[test,jax,dask,array-api-strict]")
    session.run("python", "-m", "conformance.run", *session.posargs)


@nox.session(python=PYTHON)
def bench_tensorflow(session: nox.Session) -> None:
    """The benchmark with TensorFlow's fused op beside the others (NumPy < 2, TF 2.15's pin)."""
    session.install(TORCH, GOLDEN_PACKAGES[0], "numpy<2", ".[bench]")
    session.run(
        "python",
        "benchmarks/bench.py",
        "--out",
        "benchmarks/results/cpu_tensorflow.json",
        "--no-plots",  # the performance page plots the main run; this one adds a table
        *session.posargs,
        env={"TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark harness (``-- --quick`` for a short run)."""
    session.install(TORCH, ".[bench,jax]")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session(python=PYTHON if HAS_GPU else False)
def gpu(session: nox.Session) -> None:
    """Everything that needs a CUDA GPU, in one command (about ten minutes).

    The conformance suite on every backend (CuPy and PyTorch-CUDA columns
    included, written to docs/conformance-gpu.md), the no-synchronization test
    under ``torch.cuda.set_sync_debug_mode("error")`` and the GPU benchmark
    (written to docs/performance-gpu.md). Skipped, without creating an
    environment, on a machine without nvidia-smi. Not a default session.
    """
    if not HAS_GPU:
        session.skip("needs a CUDA GPU and this machine has none (nvidia-smi not found)")
    # On Linux, PyPI's torch==2.13.0 is the CUDA build.
    session.install(TORCH, ".[test,cupy,jax,dask,array-api-strict]")
    session.run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv", external=True)
    session.run("pytest", "tests/test_no_sync.py", "-q", "-rs")
    session.run("python", "-m", "conformance.run", "--report", "docs/conformance-gpu.md")
    session.run(
        "python", "benchmarks/bench_gpu.py",
        "--out", "benchmarks/results/gpu.json", "--markdown", "docs/performance-gpu.md",
    )

"""Sessions: lint, doctests, docs, tests (one per backend), gpu_tests, scaleout, vendoring,
package, numpy1, golden, golden_check, checkpoints, conformance, robustness, bench,
bench_tensorflow, bench_scale_out, gpu.

``nox`` with no arguments runs what CI runs: lint, the docstring examples, the
docs site (strict), the unit tests on every CPU backend (and on the GPU ones
where there is a GPU), the scale-out tests (processes, devices and a cluster),
the unit tests against vendored copies, the wheel and sdist with a smoke test
of the installed wheel, the NumPy tests and conformance again on NumPy 1.x, the
golden check (regenerates TensorFlow's outputs and compares them with the
committed goldens) and the conformance suite.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox
import tomllib

nox.options.sessions = [
    "conformance", "golden_check", "tests", "gpu_tests", "vendoring", "numpy1", "lint",
    "doctests", "docs", "package", "scaleout",
]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
#: Two sessions at a time, each in its own process, its output printed when it
#: ends (``-j 1`` runs them in turn). Most sessions keep one core busy (pip,
#: one pytest process), so on two cores a run of ``nox`` takes about three
#: quarters of the time in turn (17.5–18.5 against 24 minutes, measured on a
#: 2-core Xeon). The longest, the conformance suite (two worker processes of its
#: own), starts first; the scale-out tests (processes, a cluster, timeouts) and
#: the benchmarks run alone.
nox.options.parallel = 2
nox.options.allow_parallel = True

#: OpenMP threads (PyTorch's) that run out of work sleep at once instead of
#: spinning: beside another session, a spinning thread holds the core that
#: session needs. Set by the sessions that run beside others.
SHARED_CORES = {"OMP_WAIT_POLICY": "PASSIVE"}

#: Every environment that installs PyTorch pins it: on the project's machines a
#: CPU build of 2.13.0 for Python 3.11 is provided locally, while an unpinned
#: ``torch`` (or another version) pulls a multi-GB CUDA build from PyPI.
TORCH = "torch==2.13.0"
PYTHON = "3.11"

#: What each backend's environment installs besides ``.[test]``. The tests that
#: take no ``backend`` (validation, gradients against JAX's, the README's code
#: blocks, ...) run once, in the NumPy session (tests/conftest.py), which
#: therefore has every CPU array library and the optional integrations.
BACKEND_PACKAGES = {
    "numpy": [".[jax,dask,array-api-strict,progress]"],
    "array-api-strict": [".[array-api-strict]"],
    "torch": [],
    "jax": [".[jax]"],
    "dask": [".[dask]"],
}
GPU_BACKEND_PACKAGES = {
    "cupy": [".[cupy]"],
    "torch-cuda": [],
}
#: Decided before any session starts, so that GPU sessions on a machine without
#: one skip without creating (and filling) an environment first.
HAS_GPU = shutil.which("nvidia-smi") is not None

#: The pytest ``--backend`` names each session covers (JAX also under jax.jit).
TEST_BACKENDS = {"jax": ["jax", "jax-jit"]}

#: TensorFlow's golden environment (docs/tensorflow-semantics.md): nothing else goes in it.
GOLDEN_PACKAGES = ["tensorflow-cpu==2.15.1", "tf-keras==2.15.1", "tf-slim==1.1.0", "numpy<2"]
#: TensorFlow on a CPU-only machine: no CUDA probing, and no C++ log lines below
#: FATAL (tensorflow-cpu still logs failed cuDNN/cuFFT/cuBLAS registrations).
#: Python exceptions are unaffected.
TF_QUIET = {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}


#: The type checker and the NumPy whose stubs it reads, pinned: a new release
#: of either may report new errors in unchanged code.
MYPY_PACKAGES = ["mypy==2.4.1", "numpy==2.4.6"]


def _install(session: nox.Session, *packages: str) -> None:
    """``pip install`` without compiling every module to bytecode first: a session
    imports a small part of what it installs, and compiling all of PyTorch took
    17 of the 29 seconds of its install on 2 cores (Python compiles what is
    imported, once, when it is imported)."""
    session.install("--no-compile", *packages)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff; ``mypy --strict`` on the package (PyTorch installed: ``bn_portable.torch``
    subclasses its ``nn.Module``); and a user's program type-checked against the API."""
    _install(session, "ruff==0.17.5", TORCH, *MYPY_PACKAGES, ".[test]")
    session.run("ruff", "check", "src", "tests", "conformance", "benchmarks", "docs", "noxfile.py")
    session.run("mypy", "--strict", "src/bn_portable")
    session.run("pytest", "tests/test_typing.py")


@nox.session(python=PYTHON)
def doctests(session: nox.Session) -> None:
    """The examples in the public docstrings, on NumPy alone."""
    _install(session, ".[test]")
    session.run("pytest", "tests/test_doctests.py", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the docs site with warnings as errors (``-- serve`` to preview it)."""
    _install(session, ".[docs]")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
        return
    site = Path(session.create_tmp()) / "site"
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site), *session.posargs,
                env={"NO_MKDOCS_2_WARNING": "1"})


def _unit_tests(session: nox.Session, backend: str, packages: list[str]) -> None:
    # PyTorch is in every session: the gradient tests use its autograd as a reference.
    _install(session, TORCH, ".[test]", *packages)
    selected = [f"--backend={name}" for name in TEST_BACKENDS.get(backend, [backend])]
    # Tests that start processes, devices or a cluster run once, in ``scaleout``.
    session.run("pytest", *selected, "-m", "not scaleout", *session.posargs, env=SHARED_CORES)


@nox.session(python=PYTHON)
@nox.parametrize("backend", list(BACKEND_PACKAGES))
def tests(session: nox.Session, backend: str) -> None:
    """Unit tests on one backend, e.g. ``nox -s "tests(backend='torch')"``."""
    _unit_tests(session, backend, BACKEND_PACKAGES[backend])


@nox.session(python=PYTHON if HAS_GPU else None, venv_backend=None if HAS_GPU else "none")
@nox.parametrize("backend", list(GPU_BACKEND_PACKAGES))
def gpu_tests(session: nox.Session, backend: str) -> None:
    """Unit tests on a GPU backend; without a GPU they skip before creating an environment."""
    if not HAS_GPU:
        session.skip(f"{backend} needs a CUDA GPU and this machine has none (nvidia-smi not found)")
    _unit_tests(session, backend, GPU_BACKEND_PACKAGES[backend])


@nox.session(python=PYTHON, allow_parallel=False)
def scaleout(session: nox.Session) -> None:
    """Synchronized BN over two gloo processes and two JAX CPU devices; a two-worker Dask cluster."""
    _install(session, TORCH, ".[test,jax,distributed,progress]")
    session.run("pytest", "-m", "scaleout", *session.posargs)


@nox.session(python=PYTHON)
def numpy1(session: nox.Session) -> None:
    """Unit tests and conformance on NumPy 1.x (TensorFlow 2.15, the reference, pins numpy < 2)."""
    _install(session, TORCH, ".[test]", "numpy>=1.24,<2")
    session.run("pytest", "--backend=numpy", "-m", "not scaleout", *session.posargs, env=SHARED_CORES)
    session.run(
        "python", "-m", "conformance.run",
        "--backend=numpy", "--backend=numpy-generic", "--no-report", "--jobs=1", env=SHARED_CORES,
    )


def _golden(session: nox.Session, arguments: list[str]) -> None:
    _install(session, *GOLDEN_PACKAGES)
    session.run(
        "python", "-m", "conformance.generate", *arguments,
        env={"TF_ENABLE_ONEDNN_OPTS": "0", **TF_QUIET},
    )


@nox.session(python=PYTHON)
def golden(session: nox.Session) -> None:
    """Regenerate the goldens with TensorFlow (``-- --check`` compares instead)."""
    _golden(session, session.posargs)


@nox.session(python=PYTHON)
def golden_check(session: nox.Session) -> None:
    """Regenerate the goldens into a temporary folder; fail unless identical (the porting
    test files of ``checkpoints`` too, array for array)."""
    _golden(session, ["--check"])
    session.run(
        "python", "-m", "conformance.checkpoints", "--check",
        env={"TF_ENABLE_ONEDNN_OPTS": "0", **TF_QUIET},
    )


@nox.session(python=PYTHON)
def checkpoints(session: nox.Session) -> None:
    """Rewrite tests/data/porting: checkpoints and Keras files TensorFlow trains and saves
    (``-- --check`` compares instead)."""
    _install(session, *GOLDEN_PACKAGES)  # tensorflow brings h5py
    session.run(
        "python", "-m", "conformance.checkpoints", *session.posargs,
        env={"TF_ENABLE_ONEDNN_OPTS": "0", **TF_QUIET},
    )


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """Every golden case on every backend present, fast paths on and off; writes the report."""
    _install(session, TORCH, ".[test,jax,dask,array-api-strict]")
    session.run("python", "-m", "conformance.run", *session.posargs, env=SHARED_CORES)


@nox.session(python=PYTHON, allow_parallel=False)
def robustness(session: nox.Session) -> None:
    """Rewrite docs/robustness.md: ill-conditioned batches, float16 range, edge shapes, threads."""
    _install(session, TORCH, ".[test,jax,dask,array-api-strict]")
    session.run("python", "benchmarks/robustness.py", *session.posargs)


@nox.session(python=PYTHON, allow_parallel=False)
def bench_tensorflow(session: nox.Session) -> None:
    """The benchmark with TensorFlow's fused op beside the others (NumPy < 2, TF 2.15's pin)."""
    _install(session, TORCH, GOLDEN_PACKAGES[0], "numpy<2", ".[bench]")
    session.run(
        "python",
        "benchmarks/bench.py",
        "--out",
        "benchmarks/results/cpu_tensorflow.json",
        "--no-plots",  # the performance page plots the main run; this one adds a table
        *session.posargs,
        env=TF_QUIET,
    )


@nox.session(python=PYTHON, allow_parallel=False)
def bench(session: nox.Session) -> None:
    """The benchmark harness (``-- --quick`` for a short run)."""
    _install(session, TORCH, ".[bench,jax]")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session(python=PYTHON, allow_parallel=False)
def bench_scale_out(session: nox.Session) -> None:
    """Dask throughput with 1 and 2 workers; synchronization cost, two gloo processes vs one."""
    _install(session, TORCH, ".[distributed]")
    session.run("python", "benchmarks/scale_out.py", *session.posargs)


@nox.session(python=PYTHON)
def vendoring(session: nox.Session) -> None:
    """The unit tests against a copy vendored under a fake library, with and without the hook.

    The environment has neither bn_portable nor array-api-compat installed:
    the copy must find the array-api-compat vendored with it.
    """
    # The test extra's requirements, but not the package itself.
    pyproject = tomllib.loads(Path("pyproject.toml").read_text())
    _install(session, TORCH, *pyproject["project"]["optional-dependencies"]["test"])
    tmp = Path(session.create_tmp())
    site = tmp / "array-api-compat"
    session.run(
        "python", "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
        "--target", str(site), "array-api-compat>=1.11",
    )
    # Both ways of vendoring on NumPy; the hook's, what a vendoring library writes, on
    # PyTorch too (its fast paths import the vendored array-api-compat the same way).
    for variant in (["--backend=numpy"], ["--hook", "--backend=numpy", "--backend=torch"]):
        session.run(
            "python", "tests/vendor_copy.py", "--array-api-compat", str(site / "array_api_compat"),
            "--dest", str(tmp / "vendored"), *variant, "--", "-q", "-m", "not scaleout", *session.posargs,
            env=SHARED_CORES,
        )


#: What the smoke test runs with the installed wheel, outside the repository.
SMOKE = """
import numpy as np, bn_portable as bn
x = np.random.default_rng(0).normal(size=(8, 4, 4, 3)).astype(np.float32)
y, state = bn.batch_norm(x, decay=0.9, scale=True, fused=True)
y, state, vjp = bn.batch_norm_vjp(x, state, decay=0.9, scale=True, fused=True)
dx, dgamma, dbeta = vjp(np.ones_like(y))
assert y.shape == x.shape and state.moving_variance.shape == (3,) and dx.shape == x.shape
assert bn.__file__.endswith("site-packages/bn_portable/__init__.py"), bn.__file__
print("bn_portable", bn.__version__, "from the wheel: ok")
"""


@nox.session(python=PYTHON)
def package(session: nox.Session) -> None:
    """Build the wheel and sdist, check the sdist, install the wheel in a clean venv, run it."""
    _install(session, "build>=1.2")
    tmp = Path(session.create_tmp())
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), ".")
    session.run("python", "-c", _CHECK_SDIST, str(dist))
    (wheel,) = dist.glob("bn_portable-*.whl")
    clean = tmp / "clean"
    shutil.rmtree(clean, ignore_errors=True)
    session.run("python", "-m", "venv", str(clean))
    python = str(clean / "bin" / "python")
    session.run(python, "-m", "pip", "install", "--quiet", f"{wheel}[numpy]", external=True)
    session.run(python, "-c", SMOKE, external=True, env={"PYTHONPATH": ""})


_CHECK_SDIST = """
import sys, tarfile, pathlib
(sdist,) = pathlib.Path(sys.argv[1]).glob("bn_portable-*.tar.gz")
names = tarfile.open(sdist).getnames()
assert not [n for n in names if "/conformance/goldens/" in n], "the sdist ships the goldens"
assert any(n.endswith("/src/bn_portable/__init__.py") for n in names), "the sdist lacks the package"
size = sdist.stat().st_size
assert size < 1_000_000, f"the sdist is {size} bytes"
print(f"{sdist.name}: {len(names)} files, {size / 1e3:.0f} kB, no goldens")
"""


@nox.session(python=PYTHON if HAS_GPU else False, allow_parallel=False)
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
    _install(session, TORCH, ".[test,cupy,jax,dask,array-api-strict]")
    session.run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv", external=True)
    session.run("pytest", "tests/test_no_sync.py", "-q", "-rs")
    session.run("python", "-m", "conformance.run", "--report", "docs/conformance-gpu.md")
    session.run(
        "python", "benchmarks/bench_gpu.py",
        "--out", "benchmarks/results/gpu.json", "--markdown", "docs/performance-gpu.md",
    )

"""The repository's checks, one session each; ``nox`` with no arguments runs what CI runs.

docs/development.md describes each session and how long a run takes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = [
    "conformance", "golden_check", "convention_check", "tests", "gpu_tests", "vendoring", "numpy1",
    "lint", "doctests", "docs", "package", "scaleout",
]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
#: Two sessions at a time, each in its own process, its output printed when it
#: ends (``-j 1`` runs them in turn): most sessions keep one core busy (pip, one
#: pytest process), so a second one uses the other core of a small machine
#: (docs/development.md has the times). The longest, the conformance suite (two
#: worker processes of its own), starts first; the scale-out tests (processes, a
#: cluster, timeouts) and the benchmarks run alone.
nox.options.parallel = 2
nox.options.allow_parallel = True

#: OpenMP threads (PyTorch's) that run out of work sleep at once instead of
#: spinning: beside another session, a spinning thread holds the core that
#: session needs. Set by the sessions that run beside others.
SHARED_CORES = {"OMP_WAIT_POLICY": "PASSIVE"}

#: Every environment that installs PyTorch pins it, to the version whose CPU
#: build the project's machines provide (docs/development.md).
TORCH = "torch==2.13.0"
PYTHON = "3.11"
#: Read once: its dependency groups are the sessions' tool sets.
PYPROJECT = nox.project.load_toml("pyproject.toml")

#: What each backend's environment installs besides ``.[test]``. The tests that
#: take no ``backend`` (validation, gradients against JAX's, the README's code
#: blocks, ...) run once, in the NumPy session (tests/conftest.py), which
#: therefore has every CPU array library and the optional integrations.
BACKEND_PACKAGES = {
    # bench: the benchmark harnesses' tiny run (tests/test_benchmarks.py), Flax included.
    "numpy": [".[jax,flax,dask,array-api-strict,progress,bench]"],
    "array-api-strict": [".[array-api-strict]"],
    "torch": [],
    "jax": [".[jax]"],
    "dask": [".[dask]"],
}
GPU_BACKEND_PACKAGES = {
    "cupy": [".[cupy]"],
    "torch-cuda": [],
}
#: Decided before any session starts: on a machine without a GPU, the GPU
#: sessions get no environment (``python=False``), so they skip (``_needs_gpu``)
#: without creating and filling one first.
HAS_GPU = shutil.which("nvidia-smi") is not None
GPU_PYTHON = PYTHON if HAS_GPU else False

#: The pytest ``--backend`` names each session covers (JAX also under jax.jit).
TEST_BACKENDS = {"jax": ["jax", "jax-jit"]}

#: TensorFlow on a CPU-only machine: no CUDA probing, and no C++ log lines below
#: FATAL (tensorflow-cpu still logs failed cuDNN/cuFFT/cuBLAS registrations).
#: Python exceptions are unaffected.
TF_QUIET = {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _install(session: nox.Session, *packages: str) -> None:
    """``pip install`` without compiling every module to bytecode first: a session
    imports a small part of what it installs, and Python compiles what is imported,
    once, when it is imported (docs/development.md has the time this saves)."""
    session.install("--no-compile", *packages)


def _group(name: str) -> tuple[str, ...]:
    """The requirements of one of pyproject.toml's dependency groups."""
    return nox.project.dependency_groups(PYPROJECT, name)


def _tensorflow(session: nox.Session, *packages: str, golden: bool = True) -> dict[str, str]:
    """Install TensorFlow's environment (the ``tensorflow`` dependency group) and
    ``packages``; return the variables that TensorFlow runs with.

    Outputs that are compared (``golden``) come from TensorFlow without oneDNN,
    which changes fused results by about one ulp on some CPUs; a benchmark times
    TensorFlow's defaults.
    """
    _install(session, *_group("tensorflow"), *packages)
    return {**TF_QUIET, "TF_ENABLE_ONEDNN_OPTS": "0"} if golden else dict(TF_QUIET)


def _needs_gpu(session: nox.Session) -> None:
    if not HAS_GPU:
        session.skip("needs a CUDA GPU and this machine has none (nvidia-smi not found)")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff; ``mypy --strict`` on the package (PyTorch installed: ``bn_portable.torch``
    subclasses its ``nn.Module``) and the helper programs; the import layers; and a
    user's program type-checked against the API."""
    _install(session, *_group("lint"), TORCH, ".[test]")
    session.run(
        "ruff", "check", "src", "tests", "conformance", "benchmarks", "docs", "tools", "noxfile.py",
    )
    session.run("mypy", "--strict", "src/bn_portable", "tools")
    # The source tree's imports, not those of the copy installed in the environment.
    session.run("lint-imports", env={"PYTHONPATH": "src"})
    session.run("pytest", "tests/test_typing.py")


@nox.session(python=PYTHON)
def doctests(session: nox.Session) -> None:
    """The examples in the public docstrings, on NumPy alone."""
    _install(session, ".[test]")
    session.run("pytest", "tests/test_doctests.py", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the docs site with warnings as errors (``-- serve`` to preview it)."""
    _install(session, ".", *_group("docs"))
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


@nox.session(python=GPU_PYTHON)
@nox.parametrize("backend", list(GPU_BACKEND_PACKAGES))
def gpu_tests(session: nox.Session, backend: str) -> None:
    """Unit tests on a GPU backend; without a GPU they skip before creating an environment."""
    _needs_gpu(session)
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


@nox.session(python=PYTHON)
def golden(session: nox.Session) -> None:
    """Regenerate the goldens with TensorFlow (``-- --check`` compares instead)."""
    env = _tensorflow(session)
    session.run("python", "-m", "conformance.generate", *session.posargs, env=env)


@nox.session(python=PYTHON)
def golden_check(session: nox.Session) -> None:
    """Regenerate the goldens into a temporary folder; fail unless identical or within the
    rounding that depends on the processor (the porting test files of ``checkpoints`` and its
    whole models too; conformance/README.md says how each is compared)."""
    env = _tensorflow(session)
    session.run("python", "-m", "conformance.generate", "--check", env=env)
    session.run("python", "-m", "conformance.checkpoints", "--check", env=env)
    session.run("python", "-m", "conformance.keras_models", "--check", env=env)


#: Each other framework's golden environment: the framework that computes its own
#: convention's goldens (conformance/conventions), pinned so that ``--check`` compares
#: like with like.
CONVENTION_FRAMEWORKS = {
    "pytorch": [TORCH, "numpy==2.4.6", "ml_dtypes==0.7.0"],
    "keras": ["keras==3.15.1", "jax==0.10.2", "jaxlib==0.10.2", "numpy==2.4.6"],
    "flax": ["flax==0.12.8", "jax==0.10.2", "jaxlib==0.10.2", "numpy==2.4.6"],
    "onnx": ["onnx==1.23.2", "onnxruntime==1.32.0", "numpy==2.4.6"],
}

#: Keras 3 runs on JAX here (its NumPy backend does not train).
CONVENTION_ENV = {"keras": {"KERAS_BACKEND": "jax"}}


@nox.session(python=PYTHON)
@nox.parametrize("framework", list(CONVENTION_FRAMEWORKS))
def convention_goldens(session: nox.Session, framework: str) -> None:
    """Regenerate one framework's convention goldens with the framework itself
    (``-- --check`` compares instead; ``convention_check`` runs that in CI)."""
    _install(session, *CONVENTION_FRAMEWORKS[framework])
    session.run(
        "python", "-m", "conformance.conventions.generate", framework, *session.posargs,
        env=CONVENTION_ENV.get(framework, {}),
    )


@nox.session(python=PYTHON)
@nox.parametrize("framework", list(CONVENTION_FRAMEWORKS))
def convention_check(session: nox.Session, framework: str) -> None:
    """Regenerate one framework's convention goldens into a temporary folder; fail unless
    identical."""
    _install(session, *CONVENTION_FRAMEWORKS[framework])
    session.run(
        "python", "-m", "conformance.conventions.generate", framework, "--check",
        env=CONVENTION_ENV.get(framework, {}),
    )


@nox.session(python=PYTHON)
def checkpoints(session: nox.Session) -> None:
    """Rewrite tests/data/porting: checkpoints and Keras files TensorFlow trains and saves,
    a whole MobileNetV2 and each way Keras 2 runs (``-- --check`` compares instead)."""
    env = _tensorflow(session)  # tensorflow brings h5py
    session.run("python", "-m", "conformance.checkpoints", *session.posargs, env=env)
    session.run("python", "-m", "conformance.keras_models", *session.posargs, env=env)


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
    env = _tensorflow(session, TORCH, ".[bench]", golden=False)
    session.run(
        "python",
        "benchmarks/bench.py",
        "--out",
        "benchmarks/results/cpu_tensorflow.json",
        "--no-plots",  # the performance page plots the main run; this one adds a table
        *session.posargs,
        env=env,
    )


@nox.session(python=PYTHON, allow_parallel=False)
def bench(session: nox.Session) -> None:
    """Every benchmark, saved under benchmarks/results, then the reports and docs/performance.md.

    Whole models (``models.py``), every layer path (``layer_paths.py``) and the
    kernels (``bench.py``); ``-- --quick`` for fewer rounds. The targets report
    (results/targets.md) lists any ratio 25 % above the previous saved run's.
    """
    _install(session, TORCH, ".[bench,jax]")
    quick = [arg for arg in session.posargs if arg == "--quick"]
    session.run("python", "benchmarks/models.py", *quick)
    session.run("python", "benchmarks/layer_paths.py", *quick)
    session.run("python", "benchmarks/bench.py", *session.posargs)
    session.run("python", "benchmarks/targets.py")
    session.run("python", "benchmarks/page.py")
    session.run(
        "python", "benchmarks/report.py", "benchmarks/results/cpu.json",
        "--tensorflow", "benchmarks/results/cpu_tensorflow.json",
        "--out", "benchmarks/results/kernels.md",
    )


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
    _install(session, TORCH, *PYPROJECT["project"]["optional-dependencies"]["test"])
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


@nox.session(python=PYTHON)
def package(session: nox.Session) -> None:
    """Build the wheel and sdist, check the sdist, install the wheel in a clean venv, run it."""
    _install(session, "build>=1.2")
    tmp = Path(session.create_tmp())
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), ".")
    session.run("python", "tools/check_sdist.py", str(dist))
    (wheel,) = dist.glob("bn_portable-*.whl")
    clean = tmp / "clean"
    shutil.rmtree(clean, ignore_errors=True)
    session.run("python", "-m", "venv", str(clean))
    python = str(clean / "bin" / "python")
    session.run(python, "-m", "pip", "install", "--quiet", f"{wheel}[numpy]", external=True)
    session.run(python, "tools/smoke_wheel.py", external=True, env={"PYTHONPATH": ""})


@nox.session(python=GPU_PYTHON, allow_parallel=False)
def gpu(session: nox.Session) -> None:
    """Everything that needs a CUDA GPU, in one command.

    The conformance suite on every backend (CuPy and PyTorch-CUDA columns
    included, written to docs/conformance-gpu.md), the no-synchronization test
    under ``torch.cuda.set_sync_debug_mode("error")`` and the GPU benchmark
    (written to docs/performance-gpu.md) and the end-to-end models
    (docs/performance-gpu-models.md). Skipped, without creating an
    environment, on a machine without nvidia-smi. Not a default session.
    """
    _needs_gpu(session)
    # On Linux, PyPI's torch==2.13.0 is the CUDA build.
    _install(session, TORCH, ".[test,cupy,jax,dask,array-api-strict]")
    session.run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv", external=True)
    session.run("pytest", "tests/test_no_sync.py", "-q", "-rs")
    session.run("python", "-m", "conformance.run", "--report", "docs/conformance-gpu.md")
    session.run(
        "python", "benchmarks/bench_gpu.py",
        "--out", "benchmarks/results/gpu.json", "--markdown", "docs/performance-gpu.md",
    )
    # The end-to-end models on the GPU (JAX stays on the CPU there: no CUDA jaxlib here).
    session.run(
        "python", "benchmarks/models.py", "--device", "cuda", "--no-jax",
        "--out", "benchmarks/results/models-gpu.json",
    )
    session.run(
        "python", "benchmarks/page.py", "--models", "benchmarks/results/models-gpu.json",
        "--models-only", "--out", "docs/performance-gpu-models.md",
    )

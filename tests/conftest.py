"""The ``backend`` fixture: every test that takes it runs on every array library.

Backends come from ``conformance.backends`` so that unit tests and the
conformance suite cover the same libraries. ``--backend NAME`` (repeatable)
restricts the run, as the per-backend nox sessions do.
"""

from __future__ import annotations

import os

import pytest
from conformance.backends import BACKENDS, Backend, by_name
from hypothesis import HealthCheck, settings

# Property tests (tests/test_properties.py). "ci", the default, is fixed and
# derandomized: the same examples on every run, small enough for every backend.
# HYPOTHESIS_PROFILE=thorough draws many more, at random, for local runs.
_PROPERTY_CHECKS = dict(
    deadline=None,  # jax.jit compiles on first use of a shape; Dask builds graphs
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("ci", max_examples=6, derandomize=True, database=None, **_PROPERTY_CHECKS)
settings.register_profile("thorough", max_examples=300, **_PROPERTY_CHECKS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The fast-path variants and jit are exercised by the conformance suite; unit
# tests run each library once, eagerly, plus jax-jit for tracing.
_UNIT_BACKENDS = [b for b in BACKENDS if b.fast_paths]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="append",
        default=None,
        help="run backend-parametrized tests on this backend only (repeatable)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    wanted = metafunc.config.getoption("--backend")
    for name in wanted or ():
        by_name(name)  # a mistyped name fails loudly instead of selecting nothing
    chosen = [b for b in _UNIT_BACKENDS if wanted is None or b.name in wanted]
    metafunc.parametrize("backend", chosen, ids=[b.name for b in chosen], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    reason = chosen.absent_reason()
    if reason is not None:
        pytest.skip(f"{chosen.name}: {reason}")
    return chosen


#: Where a test that takes no ``backend`` runs when ``--backend`` restricts the
#: run: with the NumPy backend (the ``numpy`` session installs every CPU array
#: library, so tests that need JAX, Dask or array-api-strict run there too),
#: or with the backend its ``home_backend`` marker names. In every other
#: session it would run again with the same libraries and the same result.
DEFAULT_HOME = "numpy"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("--backend")
    if wanted is None:
        return
    kept, elsewhere = [], []
    for item in items:
        runs_here = "backend" in item.fixturenames or _home(item) in wanted
        (kept if runs_here else elsewhere).append(item)
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = kept


def _home(item: pytest.Item) -> str:
    marker = item.get_closest_marker("home_backend")
    return marker.args[0] if marker else DEFAULT_HOME


@pytest.fixture
def tiny_numpy_blocks(monkeypatch: pytest.MonkeyPatch):
    """The NumPy fast paths with every input taken and cut into tiny blocks.

    Small test inputs then run the multi-block code: several row blocks and
    chunks, channel groups split across rows, partial last blocks, short BLAS
    runs and their float64 totals. Returns the module of the constants
    (``bn_portable._native._numpy._plan``), which plans read when made.
    """
    from bn_portable._native._numpy import _plan

    for name, value in {
        "SMALLEST_INPUT": 0,
        "SMALLEST_HALF_INPUT": 0,
        "WHOLE_PASS_INPUT": 0,
        "SMALLEST_BLOCK": 16,
        "ROW_BLOCK": 96,
        "CHANNEL_GROUP": 200,
        "ROWS_PER_PARTIAL": 4,
        "BLOCKS_PER_CHUNK": 2,
        "SEGMENT": 64,
    }.items():
        monkeypatch.setattr(_plan, name, value)
    return _plan

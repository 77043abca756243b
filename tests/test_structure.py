"""The repository's structure: small modules everywhere; in the package, imports at the top,
one options source, fast paths that take their generic kernel's parameters, and a public API
that does not move."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import numpy as np
import pytest

import bn_portable as bn
from bn_portable import _grad, _layer, _recalibrate
from bn_portable._native import Kernel
from bn_portable._tf import _options, _plan, _variables

PACKAGE = Path(bn.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
#: Where the repository keeps Python: the package, its tests, conformance suite,
#: benchmarks, tools and docs hooks (virtual environments and build output excluded).
REPOSITORY_FOLDERS = ("src", "tests", "conformance", "benchmarks", "tools", "docs")

#: Libraries a function may import where it needs them: optional extras, and the
#: fast-path modules that import them.
OPTIONAL = ("torch", "jax", "dask", "numpy", "tqdm", "h5py", "_torch", "_numpy")
#: (module, function) that may import more: array-api-compat's PyTorch wrapper, which
#: imports PyTorch, from the one module that imports array-api-compat.
IMPORTERS = {("_compat.py", "_torch_wrapper")}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _repository_modules() -> list[Path]:
    """Every Python file of the repository: the package's and everything around it."""
    found = [ROOT / "noxfile.py"]
    for folder in REPOSITORY_FOLDERS:
        found += sorted(path for path in (ROOT / folder).rglob("*.py") if not _generated(path))
    return [path for path in found if path.exists()]


def _generated(path: Path) -> bool:
    """Hidden folders (virtual environments among them), build output and the built docs."""
    parts = path.relative_to(ROOT).parts
    return any(part.startswith(".") or part in ("build", "site", "__pycache__") for part in parts)


@pytest.mark.parametrize("path", _repository_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{path.name} has {lines} lines"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_import_only_optional_libraries(path: Path) -> None:
    """An import inside a function hides a dependency (and once hid three import cycles)."""
    tree = ast.parse(path.read_text())
    for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        if (path.name, function.name) in IMPORTERS:
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.ImportFrom):  # relative: the modules of this package
                names = [node.module] if node.module else [alias.name for alias in node.names]
            else:
                continue
            roots = {name.split(".")[0] for name in names}
            assert roots <= set(OPTIONAL), (
                f"{path.name}:{node.lineno} imports {sorted(roots)} inside {function.name}"
            )


def test_nothing_reflects_on_batch_norms_signature() -> None:
    for path in _modules():
        assert "inspect.signature" not in path.read_text(), path.name


@pytest.mark.parametrize("function", [bn.batch_norm, bn.batch_norm_vjp], ids=lambda f: f.__name__)
def test_layer_signatures_spell_out_the_one_options_list(function) -> None:
    """``batch_norm`` and ``batch_norm_vjp`` keep explicit signatures; they must match DEFAULTS."""
    keywords = {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("batch_weights", "mask")
    }
    assert list(keywords) == list(_options.DEFAULTS)
    assert keywords == dict(_options.DEFAULTS)
    assert list(_options.DEFAULTS) == [f.name for f in _options.LayerOptions.__dataclass_fields__.values()]


@pytest.mark.parametrize(
    ("function", "module"), [(bn.batch_norm, _layer), (bn.batch_norm_vjp, _grad)], ids=["batch_norm", "batch_norm_vjp"]
)
def test_layer_functions_hand_on_every_option_in_the_one_lists_order(function, module, monkeypatch) -> None:
    """They pass their options on by position (one tuple, no dictionary per call): each must
    land where ``DEFAULTS`` puts it."""
    sentinels = {name: object() for name in _options.DEFAULTS}
    received = []

    class Received(Exception):
        pass

    def receive(x, state, batch_weights, mask, option_values):
        received.append(option_values)
        raise Received

    monkeypatch.setattr(module, "prepare_call", receive)
    with pytest.raises(Received):
        function(np.zeros((2, 2), np.float32), **sentinels)
    assert received == [tuple(sentinels.values())]


def test_every_caller_takes_the_options_from_the_one_list() -> None:
    assert set(_recalibrate._OPTIONS) | {"cross_replica_sum"} == set(_options.DEFAULTS)
    assert set(_variables.PORTABLE_OPTIONS) | {"is_training"} == set(_options.DEFAULTS)
    assert _layer.prepare_call is _grad.prepare_call is _plan.prepare_call


def _generic_kernels() -> dict[Kernel, object]:
    found = {}
    for info in pkgutil.iter_modules([str(PACKAGE / "_kernels")]):
        module = importlib.import_module(f"bn_portable._kernels.{info.name}")
        for value in vars(module).values():
            kernel = getattr(value, "kernel", None)
            if isinstance(kernel, Kernel):
                found[kernel] = value.generic
    return found


def test_every_kernel_has_a_generic_definition() -> None:
    assert set(_generic_kernels()) == set(Kernel)


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_fast_paths_take_their_generic_kernels_parameters(library: str) -> None:
    pytest.importorskip(library)
    module = importlib.import_module(f"bn_portable._native._{library}")
    generic = _generic_kernels()
    assert module.KERNELS, f"{library} serves no kernel"
    for kernel, fast in module.KERNELS.items():
        expected = [(p.name, p.kind, p.default) for p in inspect.signature(generic[kernel]).parameters.values()]
        actual = [(p.name, p.kind, p.default) for p in inspect.signature(fast).parameters.values()]
        assert actual == expected, f"{library}'s {kernel.name}"
        # xp, then only optional keywords (a wider compute dtype, say).
        names = [name for name, _, _ in expected]
        assert expected[names.index("xp")][1] == inspect.Parameter.KEYWORD_ONLY
        for _, kind, default in expected[names.index("xp") + 1 :]:
            assert kind == inspect.Parameter.KEYWORD_ONLY and default is not inspect.Parameter.empty


def test_only_libraries_with_a_fast_path_module_are_dispatched() -> None:
    """No hook for a module that does not exist (CuPy, JAX, Dask run the generic kernels)."""
    source = (PACKAGE / "_native" / "__init__.py").read_text()
    assert "import importlib" not in source and "_cupy" not in source
    existing = {p.stem for p in (PACKAGE / "_native").iterdir()}
    for name in ("_torch", "_numpy"):
        assert name in existing


#: The public API, frozen: names and signatures as released. A change here is a
#: change of the public API and must be deliberate.
PUBLIC_SIGNATURES = {
    "batch_normalization": "(x, mean, variance, offset, scale, variance_epsilon)",
    "moments": "(x, axes, *, shift=None, keepdims=False, cross_replica_sum=None, mask=None)",
    "weighted_moments": "(x, axes, frequency_weights, *, keepdims=False, cross_replica_sum=None)",
    "fused_batch_norm": (
        "(x, scale, offset, mean=None, variance=None, *, epsilon=0.001, data_format='NHWC', "
        "is_training=True, exponential_avg_factor=1.0)"
    ),
    "fused_batch_norm_grad": (
        "(dy, x, scale, mean, variance, *, epsilon=0.001, data_format='NHWC', is_training=True)"
    ),
    "partial_moments": "(x, axes, *, frequency_weights=None, mask=None)",
    "merge_moments": "(*parts)",
    "recalibrate": "(batches, state, *, cross_replica_sum=None, progress=False, **options)",
    "fast_paths": "(enabled)",
    "fast_paths_enabled": "()",
}
_LAYER = (
    "(x, state=None, *, decay=0.999, center=True, scale=False, epsilon=0.001, activation_fn=None, "
    "param_initializers=None, is_training=True, batch_weights=None, mask=None, fused=False, "
    "data_format='NHWC', "
    "zero_debias_moving_mean=False, renorm=False, renorm_clipping=None, renorm_decay=0.99, "
    "cross_replica_sum=None, skip_nonfinite=False, execution='graph')"
)
PUBLIC_SIGNATURES["batch_norm"] = PUBLIC_SIGNATURES["batch_norm_vjp"] = _LAYER

PUBLIC_NAMES = [
    "BatchNormState", "PartialMoments", "__version__", "batch_norm", "batch_norm_vjp",
    "batch_normalization", "fast_paths", "fast_paths_enabled", "fused_batch_norm",
    "fused_batch_norm_grad", "merge_moments", "moments", "partial_moments", "recalibrate",
    "weighted_moments",
]


def test_the_public_names_do_not_move() -> None:
    assert sorted(bn.__all__) == sorted(PUBLIC_NAMES)


@pytest.mark.parametrize("name", sorted(PUBLIC_SIGNATURES))
def test_the_public_signatures_do_not_move(name: str) -> None:
    signature = inspect.signature(getattr(bn, name))
    unannotated = signature.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    assert str(unannotated) == PUBLIC_SIGNATURES[name]


def test_state_fields_do_not_move() -> None:
    assert bn.BatchNormState._fields == (
        "beta", "gamma", "moving_mean", "moving_variance", "moving_mean_biased", "local_step",
        "moving_stddev", "renorm_mean", "renorm_stddev", "skipped_steps",
    )
    assert bn.PartialMoments._fields == ("count", "mean", "m2")

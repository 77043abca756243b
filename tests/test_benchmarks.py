"""The benchmark harnesses run: on tiny sizes, two passes of one round (that they work, not how fast).

Each harness writes its JSON; the maintainers' report and the users' page render from
those files. Timings on tiny inputs mean nothing, so only the structure is checked:
every case ran every variant and has a ratio to its reference.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *arguments: str) -> None:
    subprocess.run([sys.executable, script, *arguments], cwd=BENCHMARKS, check=True, timeout=900)


def _assert_every_variant_ran(payload: dict) -> None:
    assert payload["cases"] and payload["passes"] == 2
    for case in payload["cases"]:
        failed = {name: r for name, r in case["results"].items() if "error" in r}
        assert not failed, case["key"]
        for result in case["results"].values():
            # A ratio is the median of one per pass over every case (_timing.time_in_passes).
            assert len(result["pass_ratios"]) == 2, case["key"]
            assert result["ratio"] == statistics.median(result["pass_ratios"]), case["key"]
            assert result["rounds"] == 2 * payload["rounds"], case["key"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("bench")
    models, paths = folder / "models.json", folder / "layer_paths.json"
    _run("models.py", "--tiny", "--out", str(models))
    _run("layer_paths.py", "--tiny", "--out", str(paths))
    return models, paths


def test_layer_paths_harness_covers_every_path(tiny_runs: tuple[Path, Path]) -> None:
    payload = json.loads(tiny_runs[1].read_text())
    _assert_every_variant_ran(payload)
    keys = {case["key"] for case in payload["cases"]}
    for backend, dtypes in (("torch", ("float32", "float16", "bfloat16")), ("numpy", ("float32", "float16"))):
        for dtype in dtypes:
            for layout in ("NCHW", "NHWC"):
                assert {f"{backend}/2x8x4x4/{layout}/{dtype}/{m}" for m in ("train", "infer")} <= keys
    train = next(c for c in payload["cases"] if c["key"] == "torch/2x8x4x4/NHWC/float16/train")
    assert {"native", "fused", "non-fused", "renorm", "weighted", "zero-debias"} <= set(train["results"])
    numpy_case = next(c for c in payload["cases"] if c["backend"] == "numpy")
    assert all(value > 0 for value in numpy_case["peak_memory_vs_input"].values())
    for case in payload["cases"]:  # every case has its floors, NumPy's included
        assert {"floor fused", "floor non-fused"} <= set(case["results"]), case["key"]
        # The small shapes' floors after the least checks too (the large one's would be noise).
        checked = {"floor fused + checks", "floor non-fused + checks"}
        if case["shape"] == "8x16":
            assert checked <= set(case["results"]), case["key"]
        else:
            assert not checked & set(case["results"]), case["key"]


def test_a_checked_floor_reads_the_call_metadata_then_runs_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_floors.checked`` reads the layer call's metadata key on every call (so a checked floor
    costs what the least checks cost) and returns the floor's own result."""
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _floors

    x = torch.ones(4, 3)
    reads: list[tuple[object, ...]] = []
    read_metadata = _floors.metadata
    monkeypatch.setattr(_floors, "metadata", lambda *arrays: reads.append(arrays) or read_metadata(*arrays))
    call = _floors.checked(lambda: "y", (x, None, None))
    assert [call(), call()] == ["y", "y"]
    assert len(reads) == 2 and reads[0][0] is x


@pytest.mark.parametrize("library", ["torch", "numpy"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_floors_compute_a_batch_norm(library: str, layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The floors time the path's formula: y and the statistics match PyTorch's training kernel,
    and the statistics of a batch with |mean| = 1000σ are as accurate as float32 allows."""
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _floors

    rng = np.random.default_rng(0)
    nchw = rng.normal(1000.0, 1.0, (4, 8, 40, 40)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, 8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    x = nchw if layout == "NCHW" else np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
    channel = 1 if layout == "NCHW" else 3
    shape = [1] * 4
    shape[channel] = -1
    convert = torch.from_numpy if library == "torch" else np.asarray
    mean, variance = _floors.batch_statistics(convert(x), channel)
    wide = nchw.astype(np.float64)
    mean_ulp = np.spacing(np.float32(1000.0))
    np.testing.assert_allclose(np.asarray(mean), wide.mean((0, 2, 3)), rtol=0, atol=4 * mean_ulp)
    np.testing.assert_allclose(np.asarray(variance), wide.var((0, 2, 3)), rtol=1e-4)
    expected = torch.nn.functional.batch_norm(
        torch.from_numpy(nchw), None, None, torch.from_numpy(gamma), torch.from_numpy(beta), True, 0.1, 1e-3
    ).numpy()
    for name, formula in _floors.FORMULAS.items():
        y = formula(
            convert(x), mean.reshape(shape), variance.reshape(shape),
            convert(gamma).reshape(shape), convert(beta).reshape(shape), 1e-3,
        )
        y = np.asarray(y) if layout == "NCHW" else np.asarray(y).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(y, expected, rtol=0, atol=2e-3, err_msg=name)


def test_models_harness_runs_every_model(tiny_runs: tuple[Path, Path]) -> None:
    payload = json.loads(tiny_runs[0].read_text())
    _assert_every_variant_ran(payload)
    keys = {case["key"] for case in payload["cases"]}
    for model in ("ResNet-18", "ResNet-18 channels-last", "MLP"):
        assert {f"{model}/train", f"{model}/infer"} <= keys
    assert "MLP/train compiled" in keys
    if _counts_page_faults():  # every variant's faults per call, counted around its timed calls
        for case in payload["cases"]:
            assert all(result["minor_faults"] >= 0 for result in case["results"].values()), case["key"]


def _counts_page_faults() -> bool:
    """Whether the harness counts page faults here (``_timing.minor_faults``, not None)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _timing import minor_faults
    finally:
        sys.path.remove(str(BENCHMARKS))
    return minor_faults() is not None


def test_models_harness_runs_the_jax_cases(tiny_runs: tuple[Path, Path]) -> None:
    pytest.importorskip("flax")
    payload = json.loads(tiny_runs[0].read_text())
    jax_cases = [case for case in payload["cases"] if case.get("backend") == "jax"]
    assert len(jax_cases) == 2
    for case in jax_cases:
        assert {"flax", "flax two-pass", "fused", "non-fused"} == set(case["results"])


def test_report_and_page_render_from_the_runs(tiny_runs: tuple[Path, Path], tmp_path: Path) -> None:
    models, paths = (str(p) for p in tiny_runs)
    _run("targets.py", "--models", models, "--paths", paths, "--out", str(tmp_path / "targets.md"))
    _run("page.py", "--models", models, "--paths", paths, "--out", str(tmp_path / "performance.md"))
    page = (tmp_path / "performance.md").read_text()
    assert "## What a model costs" in page and "| ResNet-18 | training step |" in page
    targets = (tmp_path / "targets.md").read_text()
    assert "| target | limit | measured | met |" in targets
    if _counts_page_faults():
        assert "| ResNet-18/train | " in targets.split("Minor page faults per call")[1]


def test_regressions_flag_ratios_a_quarter_above_the_previous_run() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _timing import regressions
    finally:
        sys.path.remove(str(BENCHMARKS))
    before = {"cases": [{"key": "k", "reference": "b", "results": {
        "a": {"ratio": 1.0, "median_ms": 2.0}, "b": {"ratio": 1.0, "median_ms": 2.0}, "c": {"ratio": 2.0}}}]}
    after = {"cases": [{"key": "k", "reference": "b", "results": {
        "a": {"ratio": 1.3, "median_ms": 2.0}, "b": {"ratio": 1.0, "median_ms": 1.54}, "c": {"ratio": 2.4}}}]}
    # The reference sped up: the medians say so beside the flag.
    assert regressions(before, after) == [
        "k a: 1.30× (previous run 1.00×; a 2.00 ms (was 2.00 ms); b 1.54 ms (was 2.00 ms))"
    ]
    assert regressions(None, after) == []
    # Page faults per call, where the run counted them, beside the medians.
    after["cases"][0]["results"]["a"]["minor_faults"] = 3840.0
    assert regressions(before, after)[0].startswith("k a: 1.30× (previous run 1.00×; a 2.00 ms, 3,840 page faults (was")


@pytest.mark.parametrize(
    ("library", "dtype", "shape", "paths", "lines"),
    [
        ("numpy", "float32", "8,4", "fused,non-fused,renorm,zero-debias", 8),  # training, inference
        # bfloat16, which NumPy lacks, compared as its bytes; torch times a step too.
        ("torch", "bfloat16", "8,4,2,2", "fused,non-fused", 6),
        ("jax", "float32", "8,4,2,2", "fused,non-fused", 4),  # each side a jit program
    ],
)
def test_compare_versions_times_every_path_against_a_revision(
    library: str, dtype: str, shape: str, paths: str, lines: int
) -> None:
    """HEAD beside the working tree: every path named, a median ratio, and the bits compared."""
    pytest.importorskip("torch")
    pytest.importorskip(library)
    if not (BENCHMARKS.parent / ".git").exists():
        pytest.skip("compares against a git revision: needs the repository")
    output = subprocess.run(
        [sys.executable, "compare_versions.py", "HEAD", "--backend", library, "--dtypes", dtype,
         "--layouts", "NHWC", "--shape", shape, "--paths", paths, "--rounds", "3", "--calls", "2"],
        cwd=BENCHMARKS, check=True, timeout=300, capture_output=True, text=True,
    ).stdout.splitlines()
    assert len(output) == lines
    assert all("new/old" in line for line in output)
    assert sum("same bits: " in line for line in output) == 2 * len(paths.split(","))

"""The goldens through the NumPy and PyTorch fast paths, every call taken in tiny blocks.

The conformance suite's inputs are small, below the sizes from which the fast
paths take some calls (NumPy's ``_plan.SMALLEST_INPUT``, PyTorch's
``_torch_moments.SMALLEST_INPUT``) or cut them into blocks, so its columns run
much of the generic kernels. Here every case runs with those cut-offs at zero
and the blocks shrunk: every fast path, its multi-block code included, is held
to the goldens' tolerances, and each kernel is checked to have served calls (a
kernel that declined everything would pass unseen).
"""

from __future__ import annotations

import collections

import pytest
from conformance import backends, run
from conformance.runner import Goldens, run_case


def test_every_golden_case_passes_through_the_numpy_fast_paths(tiny_numpy_blocks, monkeypatch):
    from bn_portable._native import _numpy

    _run_every_case(_numpy, "numpy", monkeypatch)


def test_every_golden_case_passes_through_the_torch_fast_paths(monkeypatch):
    pytest.importorskip("torch")
    from bn_portable._native import _torch, _torch_blocks, _torch_moments

    monkeypatch.setattr(_torch_moments, "SMALLEST_INPUT", 0)
    monkeypatch.setattr(_torch_blocks, "BLOCK_ELEMENTS", 64)
    _run_every_case(_torch, "torch", monkeypatch)


def _run_every_case(fast_path_module, backend_name, monkeypatch):
    served: collections.Counter[str] = collections.Counter()

    def counting(kernel, function):
        def call(*args, **kwargs):
            result = function(*args, **kwargs)
            if result is not NotImplemented:
                served[kernel.name] += 1
            return result

        return call

    kernels = {kernel: counting(kernel, function) for kernel, function in fast_path_module.KERNELS.items()}
    monkeypatch.setattr(fast_path_module, "KERNELS", kernels)
    backend = backends.by_name(backend_name)
    goldens = Goldens()
    outcomes = [run_case(case, goldens.arrays(case), backend, goldens.meta(case)) for case in run.all_cases()]
    failed = [f"{o.case_id}: {o.detail}" for o in outcomes if o.status == "fail"]
    assert not failed, "\n".join(failed[:10])
    assert sum(o.status == "pass" for o in outcomes) > 1000
    unserved = [kernel.name for kernel in fast_path_module.KERNELS if served[kernel.name] == 0]
    assert not unserved, f"never took a call: {unserved} (served: {dict(served)})"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", "1")

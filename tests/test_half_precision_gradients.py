"""Where the conformance suite loosens a tolerance, show that the gap is TensorFlow's.

On tf-slim's legacy path with float16 input TensorFlow differentiates op by op in
float16, and its gradients are compared with a wider tolerance
(``conformance.compare.HALF_PRECISION_BACKWARD_TOLERANCE``). That is only honest
if bn_portable's gradients are the better ones: here, for every such golden case,
both are measured against the exact gradient of the same inputs in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from conformance import catalogue
from conformance.backends import by_name
from conformance.runner import Goldens, layer_options

import bn_portable as bn

GOLDENS = Goldens()
CASES = [
    case
    for case in catalogue.cases()
    if case["op"] == "batch_norm_grad"
    and case["dtype"] == "float16"
    and GOLDENS.tf_path(case) == "legacy"
]


def _gradients(case, arrays, dtype):
    initializers = {
        name[len("init/"):]: value.astype(dtype)
        for name, value in arrays.items()
        if name.startswith("init/") and not name.startswith("init/state/")
    }
    weights = arrays.get("batch_weights")
    _, _, vjp = bn.batch_norm_vjp(
        arrays["x"].astype(dtype),
        None,
        param_initializers=initializers,
        batch_weights=None if weights is None else weights.astype(dtype),
        is_training=case["kwargs"].get("is_training", True),
        **layer_options(case, by_name("numpy")),
    )
    return dict(zip(("dx", "dgamma", "dbeta"), vjp(arrays["dy"].astype(dtype))))


def _relative_error(value, exact):
    return np.linalg.norm(value.astype(np.float64) - exact) / np.linalg.norm(exact)


def test_there_are_such_cases():
    assert len(CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_float16_gradients_are_closer_to_exact_than_tensorflows(case):
    arrays = GOLDENS.arrays(case)
    ours = _gradients(case, arrays, "float16")
    exact = _gradients(case, arrays, "float64")
    for name, value in ours.items():
        if value is None:
            continue
        tensorflow = arrays[name]
        assert _relative_error(value, exact[name]) <= _relative_error(tensorflow, exact[name]), name

"""The module's non-fused training step as one autograd node (``bn_portable._torch_step``).

Its gradients must be those of the recorded composite step (the functional
``batch_norm`` with autograd, which records every operation) on every non-fused
path, dtype and layout, its forward and state updates identical, and second
derivatives (a gradient penalty) those of the recorded step too.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bn_portable as bn  # noqa: E402
from bn_portable.torch import BatchNorm  # noqa: E402

PATHS = {
    "keras": {},
    "renorm": {"renorm": True, "renorm_clipping": {"rmax": 1.5, "rmin": 0.5, "dmax": 0.5}},
    "zero-debias": {"zero_debias_moving_mean": True},
    "weighted": {},
}
#: Gradient agreement, relative to the largest gradient (analytic against recorded: other roundings).
TOLERANCE = {"float32": 2e-5, "float64": 1e-12, "float16": 4e-3, "bfloat16": 3e-2}


def _data(layout: str, dtype: str, path: str):
    rng = np.random.default_rng(0)
    shape = (6, 3, 5, 4) if layout == "NCHW" else (6, 5, 4, 3)
    x = torch.from_numpy(rng.normal(1.5, 2.0, shape)).to(getattr(torch, dtype))
    dy = torch.from_numpy(rng.normal(size=shape)).to(x.dtype)
    weights = torch.from_numpy(rng.uniform(0.5, 1.5, shape[0])).to(x.dtype) if path == "weighted" else None
    return x, dy, weights


def _module(layout: str, dtype: str, path: str) -> BatchNorm:
    # The legacy path keeps its variables in x's dtype; the Keras layer in float32 for half x.
    legacy = path in ("zero-debias", "weighted")
    variables = getattr(torch, dtype) if legacy or dtype == "float64" else torch.float32
    module = BatchNorm(3, data_format=layout, dtype=variables, scale=True, decay=0.9, **PATHS[path])
    with torch.no_grad():
        module.gamma.copy_(torch.tensor([0.5, 1.0, 2.0]))
        module.beta.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return module


def _recorded(module: BatchNorm, x, weights):
    """The functional step with every operation recorded: the reference gradient."""
    options = {**module.options, "data_format": module.data_format}
    return bn.batch_norm(x, module.state, batch_weights=weights, **options)


@pytest.mark.parametrize(
    ("path", "dtype"),
    # renorm takes no float64 (TensorFlow compares with a float32 constant).
    [(p, d) for p in PATHS for d in ("float32", "float64", "float16", "bfloat16") if (p, d) != ("renorm", "float64")],
)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_one_node_gives_the_recorded_step_gradients(layout, dtype, path):
    x, dy, weights = _data(layout, dtype, path)
    module = _module(layout, dtype, path)
    x_node = x.clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    reference, reference_state = _recorded(module, x_ref, weights)
    y = module(x_node, weights)
    assert type(y.grad_fn).__name__ == "_LayerStepBackward"  # the node was taken
    assert torch.equal(y, reference)
    for field in module._statistics:
        assert torch.equal(getattr(module, field), getattr(reference_state, field)), field
    got = torch.autograd.grad((y * dy).sum(), [x_node, module.gamma, module.beta])
    parameters = [module.gamma, module.beta]
    expected = torch.autograd.grad((reference * dy).sum(), [x_ref, *parameters])
    for name, a, b in zip(("dx", "dgamma", "dbeta"), got, expected):
        assert a.dtype == b.dtype, name
        scale = float(b.double().abs().max()) or 1.0
        error = float((a.double() - b.double()).abs().max()) / scale
        assert error <= TOLERANCE[dtype], (name, error)


@pytest.mark.parametrize("path", ["keras", "weighted"])
def test_second_derivatives_are_the_recorded_steps(path):
    x, dy, weights = _data("NCHW", "float64", path)
    module = _module("NCHW", "float64", path)
    penalties = []
    for use_module in (True, False):
        inputs = x.clone().requires_grad_()
        y = module(inputs, weights) if use_module else _recorded(module, inputs, weights)[0]
        (gradient,) = torch.autograd.grad((y * dy).sum(), inputs, create_graph=True)
        (second,) = torch.autograd.grad((gradient**2).sum(), inputs)
        penalties.append(second)
    torch.testing.assert_close(penalties[0], penalties[1], rtol=1e-9, atol=1e-12)


def test_inference_and_fused_steps_do_not_take_the_node():
    x, _, _ = _data("NCHW", "float32", "keras")
    x.requires_grad_()
    module = _module("NCHW", "float32", "keras")
    assert type(module.eval()(x).grad_fn).__name__ != "_LayerStepBackward"
    fused = BatchNorm(3, data_format="NCHW", scale=True, fused=True)
    assert type(fused(x).grad_fn).__name__ != "_LayerStepBackward"
    with torch.no_grad():
        assert module.train()(x).grad_fn is None

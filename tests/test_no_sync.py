"""No call synchronizes a CUDA device: every layer path under ``set_sync_debug_mode("error")``.

PyTorch raises on any operation that waits for the GPU (a device-to-host read
such as ``.item()``, ``.tolist()``, ``bool(tensor)``, or a blocking copy from
host memory). Each public function runs twice in that mode, so that the
second call also goes through whatever the first one remembered. Skipped
without a CUDA device (``nox -s gpu`` runs it where there is one).
"""

from __future__ import annotations

import contextlib

import pytest

import bn_portable as bn

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LAYER_OPTIONS = [
    pytest.param(dict(fused=True, data_format="NCHW", scale=True), (8, 6, 5, 5), id="keras-fused-NCHW"),
    pytest.param(dict(fused=True, scale=True), (8, 5, 5, 6), id="keras-fused-NHWC"),
    pytest.param(dict(fused=True, scale=True), (32, 6), id="slim-fused-rank2"),
    pytest.param(dict(fused=True, zero_debias_moving_mean=True), (8, 5, 5, 6), id="zero-debias"),
    pytest.param(dict(scale=True), (8, 7, 6), id="keras-layer-rank3"),
    pytest.param(dict(renorm=True, scale=True), (8, 5, 5, 6), id="renorm"),
    pytest.param(dict(scale=True, weighted=True), (8, 5, 5, 6), id="weighted"),
]


@contextlib.contextmanager
def _no_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("is_training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize(("options", "shape"), LAYER_OPTIONS)
def test_layer_calls_do_not_synchronize(options, shape, is_training, dtype, fast):
    options = dict(options, is_training=is_training)
    x = torch.randn(shape, device="cuda", dtype=getattr(torch, dtype))
    if options.pop("weighted", False):
        options["batch_weights"] = torch.rand(shape[0], device="cuda")
    dy = torch.randn_like(x)
    with bn.fast_paths(fast):
        _, state = bn.batch_norm(x, None, **options)  # creating the state may copy
        xg = x.clone().requires_grad_()
        with _no_sync():
            for _ in range(2):
                y, state_out = bn.batch_norm(xg, state, **options)
                y.backward(dy)
                _, _, vjp = bn.batch_norm_vjp(x, state, **options)
                vjp(dy)
    assert torch.isfinite(y).all() and torch.isfinite(xg.grad).all()
    assert type(state_out) is type(state)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_fused_batch_norm_and_moments_do_not_synchronize(data_format, fast):
    shape = (8, 6, 5, 5) if data_format == "NCHW" else (8, 5, 5, 6)
    x = torch.randn(shape, device="cuda")
    scale, offset = torch.ones(6, device="cuda"), torch.zeros(6, device="cuda")
    mean, variance = torch.zeros(6, device="cuda"), torch.ones(6, device="cuda")
    weights = torch.rand(8, 1, 1, 1, device="cuda")
    dy = torch.randn_like(x)
    with bn.fast_paths(fast), _no_sync():
        for _ in range(2):
            bn.fused_batch_norm(x, scale, offset, data_format=data_format)
            bn.fused_batch_norm(x, scale, offset, mean, variance, data_format=data_format, is_training=False)
            bn.fused_batch_norm(
                x, scale, offset, mean, variance, data_format=data_format, exponential_avg_factor=0.3
            )
            bn.fused_batch_norm_grad(dy, x, scale, mean, variance, data_format=data_format)
            bn.moments(x, [0, 1, 2])
            bn.weighted_moments(x, [0, 1, 2], weights)
            bn.batch_normalization(x, mean, variance, offset, scale, 1e-3)

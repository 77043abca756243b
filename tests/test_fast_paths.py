"""The public functions with the fast paths on and off: the same results, gradients included.

The tolerances are those of ``fast_paths_cases``.
"""

from __future__ import annotations

import numpy as np
import pytest

import bn_portable as bn
import fast_paths_cases
from fast_paths_cases import (
    GRAD_RTOL,
    RNG,
    TORCH_DTYPES,
    _assert_statistics_close,
    _assert_y_close,
    _data,
    _half_eps,
    _np,
    _to_torch,
)

# The fixtures of fast_paths_cases this module uses (pytest finds them by these names).
_seed_per_test = fast_paths_cases._seed_per_test


def test_numpy_public_functions_use_the_fast_paths():
    x, scale, offset = _data((40, 16, 16, 11), 3, "float32")  # above the small-input cut-off
    with bn.fast_paths(True):
        fast = bn.fused_batch_norm(x, scale, offset)
    with bn.fast_paths(False):
        generic = bn.fused_batch_norm(x, scale, offset)
    _assert_y_close(fast[0], generic[0], x, scale, offset, 3, "float32")
    bessel = np.float32(x.size / 11 / (x.size / 11 - 1))
    _assert_statistics_close(fast[1], generic[1], fast[2] / bessel, generic[2] / bessel, x, 3)


def test_numpy_public_backward_uses_the_fast_paths():
    x, scale, _ = _data((40, 16, 16, 11), 3, "float32")  # above the small-input cut-off
    dy = RNG.normal(size=x.shape).astype(np.float32)
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    variance = x.var(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    with bn.fast_paths(True):
        fast = bn.fused_batch_norm_grad(dy, x, scale, mean, variance)
    with bn.fast_paths(False):
        generic = bn.fused_batch_norm_grad(dy, x, scale, mean, variance)
    # The fast sums are added in another order than the generic ones.
    assert any(not np.array_equal(f, g) for f, g in zip(fast, generic))
    for f, g in zip(fast, generic):
        np.testing.assert_allclose(f, g, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(g))))


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize(
    ("shape", "data_format"),
    [
        ((4, 3, 5, 7), "NCHW"),
        ((4, 5, 7, 3), "NHWC"),
        ((8, 40, 40, 3), "NHWC"),  # the channels-last path with its own autograd node
        ((2, 3, 4, 5, 6), "NCDHW"),
        ((2, 4, 5, 6, 3), "NDHWC"),
    ],
)
@pytest.mark.parametrize("is_training", [True, False])
def test_torch_autograd_through_fast_path_equals_generic(shape, data_format, dtype, is_training):
    torch = pytest.importorskip("torch")
    channel = 1 if data_format.startswith("NC") else len(shape) - 1
    x, scale, offset = _data(shape, channel, "float32")
    dy = _to_torch(RNG.normal(size=shape), dtype)
    channels = shape[channel]
    statistics = {}
    if not is_training:
        statistics = {
            "mean": _to_torch(RNG.normal(1.0, 0.5, channels), "float32"),
            "variance": _to_torch(RNG.uniform(1.0, 3.0, channels), "float32"),
        }
    results = []
    for fast in (True, False):
        xt = _to_torch(x, dtype).requires_grad_()
        st = _to_torch(scale, "float32").requires_grad_()
        ot = _to_torch(offset, "float32").requires_grad_()
        with bn.fast_paths(fast):
            y, _, _ = bn.fused_batch_norm(
                xt, st, ot, data_format=data_format, is_training=is_training, **statistics
            )
        results.append((y, *torch.autograd.grad(y, (xt, st, ot), dy)))
    for fast_value, generic_value in zip(*results):
        f, g = _np(fast_value), _np(generic_value)
        tolerance = GRAD_RTOL if dtype == "float32" else 2 * _half_eps(dtype)
        assert np.max(np.abs(f - g)) <= tolerance * np.max(np.abs(g)), (fast_value.dtype, f, g)


def test_torch_double_backward_through_the_channels_last_path():
    torch = pytest.importorskip("torch")
    shape = (8, 40, 40, 3)
    x, scale, offset = _data(shape, 3, "float32")
    grads = []
    for fast in (True, False):
        xt = _to_torch(x, "float32").requires_grad_()
        st, ot = _to_torch(scale, "float32"), _to_torch(offset, "float32")
        with bn.fast_paths(fast):
            y, _, _ = bn.fused_batch_norm(xt, st, ot, data_format="NHWC")
        (gx,) = torch.autograd.grad((y**3).sum(), xt, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.square().sum(), xt)
        grads.append(_np(ggx))
    assert np.max(np.abs(grads[0] - grads[1])) <= 1e-3 * np.max(np.abs(grads[1]))


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_training_and_inference_agree_once_the_moving_statistics_converge(library):
    """tf-slim's testNoneUpdatesCollectionIsTrainingVariableFusedNCHW, ported.

    Ten training steps with decay 0.1 bring the moving statistics to the
    batch's; with the moving variance's Bessel correction undone, as the
    original test does, inference must give training's output (TensorFlow's
    assertAllClose: rtol = atol = 1e-6), here also with a large mean.
    """
    height, width, batch, channels = 2, 3, 10, 3
    values = RNG.random((batch, channels, height, width)) + 100.0
    x = values.astype(np.float32)
    if library == "torch":
        torch = pytest.importorskip("torch")
        x = torch.from_numpy(x)
    options = dict(decay=0.1, fused=True, data_format="NCHW")
    _, state = bn.batch_norm(x, None, **options)
    for _ in range(10):
        output_training, state = bn.batch_norm(x, state, **options)
    count = batch * height * width
    correction = np.float32((count - 1) / count)
    state = state._replace(moving_variance=state.moving_variance * correction)
    output_training, _ = bn.batch_norm(x, state, **options)
    output_inference, _ = bn.batch_norm(x, state, is_training=False, **options)
    np.testing.assert_allclose(_np_any(output_inference), _np_any(output_training), rtol=1e-6, atol=1e-6)


def _np_any(array):
    return array if isinstance(array, np.ndarray) else _np(array)

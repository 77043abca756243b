"""Bad masks, and masks where no framework has them, are refused (and a refused call changes nothing)."""

from __future__ import annotations

import numpy as np
import pytest

import bn_portable as bn
from mask_cases import _data


def test_bad_masks_are_refused_with_the_expectation() -> None:
    x = np.ones((4, 5, 3), np.float32)
    good = np.ones((4, 5), bool)
    with pytest.raises(ValueError, match=r"mask must have shape \(4, 5\) \(x's shape without its channel axis 2"):
        bn.batch_norm(x, mask=np.ones((4, 5, 1), bool))
    with pytest.raises(ValueError, match=r"mask must have shape \(4, 3\) .*axis 1 \(NCHW"):
        bn.batch_norm(x, mask=good, data_format="NCHW")
    with pytest.raises(TypeError, match="mask must have a real floating, integer or bool dtype"):
        bn.batch_norm(x, mask=good.astype(np.complex64))
    with pytest.raises(TypeError, match="mask must be an array"):
        bn.batch_norm(x, mask=[[True] * 5] * 4)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="mask is a torch array but x is a numpy array"):
        bn.batch_norm_vjp(x, mask=torch.from_numpy(good))


@pytest.mark.parametrize(
    ("shape", "options", "message"),
    [
        ((4, 5, 3), {"batch_weights": np.ones(4, np.float32)}, "mask and batch_weights cannot be combined"),
        ((4, 5, 3), {"zero_debias_moving_mean": True}, "mask cannot be combined with zero_debias_moving_mean"),
        ((4, 2, 5, 3), {"fused": True}, "mask cannot be used where TensorFlow's fused kernel runs"),
        ((4, 2, 5, 3), {"fused": True, "is_training": False}, "fused kernel runs"),
        ((6, 3), {"fused": True}, "fused kernel runs"),  # tf-slim's rank-2 fused path
    ],
    ids=["batch_weights", "zero-debias", "keras-fused", "keras-fused-inference", "slim-fused"],
)
def test_masks_are_refused_where_no_framework_has_them(shape, options, message) -> None:
    x = np.ones(shape, np.float32)
    mask = np.ones(shape[:-1], bool)
    for function in (bn.batch_norm, bn.batch_norm_vjp):
        with pytest.raises(ValueError, match=message):
            function(x, mask=mask, **options)


def test_fused_true_where_the_kernel_does_not_run_takes_the_mask() -> None:
    """At rank 3 TensorFlow's layer has no fused kernel: the composite path runs, masked."""
    x, mask = _data((5, 4, 3), {}, seed=61)
    _, fused = bn.batch_norm(x.astype(np.float32), mask=mask, fused=True)
    _, plain = bn.batch_norm(x.astype(np.float32), mask=mask)
    np.testing.assert_array_equal(fused.moving_mean, plain.moving_mean)
    np.testing.assert_array_equal(fused.moving_variance, plain.moving_variance)


def test_moments_and_partial_moments_refuse_bad_masks() -> None:
    x = np.ones((4, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"mask must broadcast to shape \(4, 5, 3\); got shape \(4, 5\)"):
        bn.moments(x, (0, 1), mask=np.ones((4, 5), bool))
    with pytest.raises(TypeError, match="mask must have a real floating, integer or bool dtype"):
        bn.moments(x, (0, 1), mask=np.ones((4, 5, 1), np.complex128))
    with pytest.raises(ValueError, match=r"mask must broadcast to shape \(4, 5, 3\)"):
        bn.partial_moments(x, (0, 1), mask=np.ones((2, 5, 1), bool))
    with pytest.raises(ValueError, match="frequency_weights and mask cannot both be given"):
        bn.partial_moments(x, 0, mask=np.ones((4, 1, 1), bool), frequency_weights=np.ones((4, 1, 1)))


def test_a_refused_module_call_changes_nothing() -> None:
    torch = pytest.importorskip("torch")
    from bn_portable.torch import BatchNorm

    module = BatchNorm(3, data_format="NHWC")
    before = {name: tensor.clone() for name, tensor in module.state_dict().items()}
    x = torch.randn(4, 5, 3)
    with pytest.raises(ValueError, match="mask must have shape"):
        module(x, mask=torch.ones(4, 5, 3, dtype=torch.bool))
    after = module.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name

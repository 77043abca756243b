"""``_backends.operand``: a Python number as a remembered 0-d tensor, for the same bits, quicker."""

from __future__ import annotations

import operator

import numpy as np
import pytest

from bn_portable._lib import _backends

torch = pytest.importorskip("torch")

#: ε's, 1/n, Bessel factors, moving-average weights, counts (some past float32's 2²⁴).
NUMBERS = [1e-3, 1e-5, 1.0 / 3.0, 1.0 / 100352, 1.0 - 0.999, 0.1, 256 / 255, 7, 256, 100352, 2**25 + 1, 1.5e-8, 12345.678]
OPERATIONS = [operator.add, operator.sub, operator.mul, operator.truediv]


@pytest.fixture(autouse=True)
def _no_remembered_numbers():
    _backends._TORCH_NUMBERS.clear()
    yield
    _backends._TORCH_NUMBERS.clear()


def _bits(tensor):
    return tensor.view(torch.int32 if tensor.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_remembered_number_gives_the_bits_of_the_number(dtype):
    generator = torch.Generator().manual_seed(20261206)
    for size in (1, 7, 512, 4099):  # vectorized loops and their scalar tails
        t = torch.randn(size, generator=generator, dtype=dtype) * 1e3
        for number in NUMBERS:
            remembered = _backends.operand(number, t)
            assert isinstance(remembered, torch.Tensor) and remembered.dtype == dtype
            for operation in OPERATIONS:
                assert torch.equal(_bits(operation(t, remembered)), _bits(operation(t, number)))
            for operation in OPERATIONS[:3]:  # number / tensor is computed as number · (1 / tensor)
                assert torch.equal(_bits(operation(remembered, t)), _bits(operation(number, t)))


def test_one_tensor_per_number_and_dtype():
    t32, t64 = torch.ones(3), torch.ones(3, dtype=torch.float64)
    assert _backends.operand(0.5, t32) is _backends.operand(0.5, torch.zeros(5))
    assert _backends.operand(0.5, t64) is not _backends.operand(0.5, t32)
    assert _backends.operand(0.5, t64).dtype == torch.float64


def test_everything_but_plain_float_cpu_tensors_gets_the_number():
    array = np.ones(3, dtype=np.float32)
    assert _backends.operand(0.5, array) == 0.5 and type(_backends.operand(0.5, array)) is float
    for half in (torch.float16, torch.bfloat16):  # PyTorch keeps the number wider there
        assert _backends.operand(0.5, torch.ones(3, dtype=half)) == 0.5
    zero_d = torch.tensor(2.0)
    assert _backends.operand(zero_d, torch.ones(3)) is zero_d  # arrays pass through
    assert _backends.operand(np.float64(0.5), torch.ones(3)) == 0.5

    class Subclass(torch.Tensor):
        pass

    assert _backends.operand(0.5, torch.ones(3).as_subclass(Subclass)) == 0.5
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:  # a dispatch mode: no real tensor may meet its fake ones
        assert _backends.operand(0.5, mode.from_tensor(torch.ones(3))) == 0.5
        assert _backends.operand(0.5, torch.ones(3)) == 0.5
    assert not _backends._TORCH_NUMBERS


def test_a_number_first_made_in_inference_mode_serves_autograd():
    with torch.inference_mode():
        _backends.operand(0.25, torch.ones(3))
    x = torch.ones(3, requires_grad=True)
    (x * _backends.operand(0.25, x)).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 0.25))


def test_remembered_numbers_are_bounded():
    t = torch.ones(2)
    for index in range(_backends._TORCH_NUMBERS_CAPACITY + 10):
        _backends.operand(float(index), t)
    assert len(_backends._TORCH_NUMBERS) <= _backends._TORCH_NUMBERS_CAPACITY
    assert torch.equal(_backends.operand(3.0, t), torch.tensor(3.0))

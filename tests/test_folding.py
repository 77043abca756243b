"""Folding a batch norm: the array-API function and the PyTorch layer fold."""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import pytest

import bn_portable as bn
from bn_portable.folding import fold_batch_norm, fold_state

RNG = np.random.default_rng(0)
C = 6
MEAN = RNG.normal(size=C)
VARIANCE = RNG.uniform(0.5, 2.0, size=C)
GAMMA = RNG.normal(1.0, 0.2, size=C)
BETA = RNG.normal(0.0, 0.2, size=C)


def _inference64(x, mean, variance, gamma, beta, epsilon):
    return (x - mean) * gamma / np.sqrt(variance + epsilon) + beta


def test_folded_equals_unfolded_on_every_backend(backend) -> None:
    if backend.jit:
        pytest.skip("the report reads values; the fold itself is plain array code")
    arrays = [backend.asarray(a, "float64") for a in (MEAN, VARIANCE, GAMMA, BETA)]
    scale, shift, report = fold_batch_norm(
        arrays[0], arrays[1], gamma=arrays[2], beta=arrays[3], epsilon=1e-3
    )
    x = RNG.normal(size=(4, C))
    # float64 in, float64 out: the only differences are float64 roundings.
    y = x * backend.to_numpy(scale) + backend.to_numpy(shift)
    np.testing.assert_allclose(y, _inference64(x, MEAN, VARIANCE, GAMMA, BETA, 1e-3), rtol=1e-13, atol=1e-13)
    assert report.channels() == ()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_rounded_once_from_float64(dtype: str) -> None:
    scale, shift, _ = fold_batch_norm(MEAN, VARIANCE, gamma=GAMMA, beta=BETA, epsilon=1e-3, dtype=dtype)
    exact_scale = GAMMA / np.sqrt(VARIANCE + 1e-3)
    # NumPy's float64 -> float16/float32 cast rounds once, to nearest even.
    np.testing.assert_array_equal(scale, exact_scale.astype(dtype))
    np.testing.assert_array_equal(shift, (BETA - MEAN * exact_scale).astype(dtype))


def test_bfloat16_rounding_is_correct_where_a_float32_detour_is_not() -> None:
    torch = pytest.importorskip("torch")
    from bn_portable._fold_kernels import FORMATS, round_to
    from bn_portable._lib._compat import array_namespace

    # Just above a bfloat16 tie, by less than float32 can hold: float32 rounds it onto
    # the tie, which then goes to even (down); the nearest bfloat16 is the upper one.
    value = 1.0 + 2.0**-8 + 2.0**-30
    tensor = torch.tensor([value, -value, 3.5e38, 1e-45, 0.0], dtype=torch.float64)
    rounded = round_to(tensor, FORMATS["bfloat16"], xp=array_namespace(tensor))
    assert float(rounded[0]) == 1.0 + 2.0**-7 == -float(rounded[1])
    assert float(tensor.to(torch.bfloat16)[0]) == 1.0  # PyTorch's cast, through float32
    assert rounded[2] == float("inf") and float(rounded[3]) == 0.0 and float(rounded[4]) == 0.0


def test_rounding_matches_exact_arithmetic_on_random_values() -> None:
    from bn_portable._fold_kernels import FORMATS, round_to
    from bn_portable._lib._compat import array_namespace

    values = RNG.normal(size=2000) * 10.0 ** RNG.uniform(-9, 6, size=2000)
    fmt = FORMATS["float16"]
    rounded = round_to(values, fmt, xp=array_namespace(values))
    with np.errstate(over="ignore"):  # values beyond 65504 become inf in both
        np.testing.assert_array_equal(rounded, values.astype(np.float16).astype(np.float64))
    for value, got in zip(values[:200], rounded[:200]):
        if got != 0 and np.isfinite(got):  # the nearest neighbour is never closer
            spacing = np.float64(np.spacing(np.float16(min(abs(got), 32768.0))))
            assert abs(Fraction(float(got)) - Fraction(float(value))) <= Fraction(float(spacing)) / 2


def test_risks_flag_constructed_channels_and_not_healthy_ones() -> None:
    mean = np.array([0.5, 300.0, 0.0, 0.0, 1.0, 0.2])
    variance = np.array([1.0, 9.0, 1e-12, 1.0, 1e6, 4.0])
    gamma = np.array([1.0, 1.0, 1.0, 1e-9, 1.0, 1.0])
    scale, _, report = fold_batch_norm(mean, variance, gamma=gamma, epsilon=0.0, dtype="float16")
    # A scale flushed to zero also loses every ulp of the output: both reasons hold.
    assert report.reasons() == {1: ("cancellation",), 2: ("overflow",), 3: ("cancellation", "subnormal")}
    assert report.channels() == (1, 2, 3)
    assert report.variance_overflow.tolist() == [False, False, False, False, True, False]
    assert report.ulps[1] > 8 >= report.ulps[0]
    assert np.isfinite(scale[4]) and scale[4] == np.float16(1e-3)  # folding fixes channel 4
    assert "channel 1: cancellation" in str(report) and "3 of 6 channels" in str(report)
    _, _, lenient = fold_batch_norm(mean, variance, gamma=gamma, epsilon=0.0, dtype="float16", max_ulps=1e4)
    assert lenient.channels() == (2, 3)


def test_nonfinite_statistics_are_reported() -> None:
    _, _, report = fold_batch_norm(np.array([np.nan, 0.0]), np.array([1.0, -1.0]), epsilon=0.0)
    assert report.reasons() == {0: ("nonfinite",), 1: ("nonfinite",)}


def test_fold_state_uses_the_moving_statistics() -> None:
    state = bn.BatchNormState(beta=BETA, gamma=GAMMA, moving_mean=MEAN, moving_variance=VARIANCE)
    folded = fold_state(state, epsilon=1e-3)
    direct = fold_batch_norm(MEAN, VARIANCE, gamma=GAMMA, beta=BETA, epsilon=1e-3)
    np.testing.assert_array_equal(folded.scale, direct.scale)
    np.testing.assert_array_equal(folded.shift, direct.shift)


@pytest.mark.parametrize(
    ("arguments", "error", "named"),
    [
        ({"mean": [0.0], "variance": np.ones(1)}, TypeError, "mean"),
        ({"mean": np.ones((1, 2)), "variance": np.ones((1, 2))}, ValueError, "mean"),
        ({"mean": np.ones(2), "variance": np.ones(3)}, ValueError, "variance"),
        ({"mean": np.ones(2), "variance": np.ones(2), "gamma": np.ones(3)}, ValueError, "gamma"),
        ({"mean": np.ones(2, np.int32), "variance": np.ones(2)}, TypeError, "mean"),
        ({"mean": np.ones(2), "variance": np.ones(2), "epsilon": -1.0}, ValueError, "epsilon"),
        ({"mean": np.ones(2), "variance": np.ones(2), "max_ulps": -1}, ValueError, "max_ulps"),
        ({"mean": np.ones(2), "variance": np.ones(2), "sigmas": 0}, ValueError, "sigmas"),
        ({"mean": np.ones(2), "variance": np.ones(2), "dtype": "int8"}, TypeError, "dtype"),
        ({"mean": np.ones(2), "variance": np.ones(2), "dtype": "bfloat16"}, TypeError, "bfloat16"),
    ],
)
def test_bad_input_names_the_argument(arguments, error, named) -> None:
    arguments = {"epsilon": 1e-3, **arguments}
    with pytest.raises(error, match=named):
        fold_batch_norm(arguments.pop("mean"), arguments.pop("variance"), **arguments)


def test_fold_state_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match="state"):
        fold_state({"moving_mean": MEAN}, epsilon=1e-3)
    with pytest.raises(ValueError, match="moving_variance"):
        fold_state(bn.BatchNormState(moving_mean=MEAN), epsilon=1e-3)


# PyTorch: folding into the preceding layer.

torch = pytest.importorskip("torch")
nn = torch.nn
from bn_portable.torch import (  # noqa: E402
    BatchNorm,
    KeptBatchNorm,
    WidenedChannels,
    fold_batch_norms,
    fold_into,
)


def _batch_norm(kind, channels, mean_scale=1.0):
    norm = kind(channels).double()
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(channels, dtype=torch.float64) * mean_scale)
        norm.running_var.copy_(torch.rand(channels, dtype=torch.float64) + 0.5)
        norm.weight.copy_(1 + 0.2 * torch.randn(channels, dtype=torch.float64))
        norm.bias.copy_(0.2 * torch.randn(channels, dtype=torch.float64))
    return norm.eval()


LAYERS = {
    "conv2d": lambda: (nn.Conv2d(3, 8, 3), nn.BatchNorm2d, (2, 3, 6, 6)),
    "conv2d-no-bias": lambda: (nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d, (2, 3, 6, 6)),
    "depthwise": lambda: (nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d, (2, 8, 6, 6)),
    "grouped-conv1d": lambda: (nn.Conv1d(4, 8, 3, groups=2), nn.BatchNorm1d, (2, 4, 7)),
    "conv3d": lambda: (nn.Conv3d(2, 8, 2), nn.BatchNorm3d, (2, 2, 3, 3, 3)),
    "linear": lambda: (nn.Linear(5, 8), nn.BatchNorm1d, (4, 5)),
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fold_into_matches_the_unfolded_pair(name: str, dtype) -> None:
    torch.manual_seed(0)
    layer, kind, shape = LAYERS[name]()
    layer, norm = layer.double(), _batch_norm(kind, 8)
    before = {k: v.clone() for k, v in {**layer.state_dict(), **norm.state_dict()}.items()}
    folded, report = fold_into(layer, norm, dtype=dtype)
    assert type(folded) is type(layer) and folded.weight.dtype == dtype and report.channels() == ()
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        expected, got = norm(layer(x)), folded(x.to(dtype)).double()
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    after = {**layer.state_dict(), **norm.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing mutated


def test_fold_into_rounds_once_from_float64() -> None:
    layer, norm = nn.Conv2d(3, 4, 1).double(), _batch_norm(nn.BatchNorm2d, 4)
    folded, _ = fold_into(layer, norm, dtype=torch.float16)
    scale = norm.weight / (norm.running_var + norm.eps).sqrt()
    weight = (layer.weight * scale.reshape(-1, 1, 1, 1)).detach().numpy()
    bias = (norm.bias + (layer.bias - norm.running_mean) * scale).detach().numpy()
    np.testing.assert_array_equal(folded.weight.detach().numpy(), weight.astype(np.float16))
    np.testing.assert_array_equal(folded.bias.detach().numpy(), bias.astype(np.float16))


def _risky_pair():
    layer, norm = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.0, 500.0, 0.0, -800.0]))
    return layer, norm


def test_refusal_names_the_channels() -> None:
    layer, norm = _risky_pair()
    with pytest.raises(ValueError, match=r"channel 1: cancellation.*\n.*channel 3: cancellation") as info:
        fold_into(layer, norm)
    assert "on_risk='keep'" in str(info.value)


def test_on_risk_keep_and_fold() -> None:
    layer, norm = _risky_pair()
    x = torch.randn(2, 3, 4, 4) + 10
    kept, report = fold_into(layer, norm, on_risk="keep")
    assert isinstance(kept, nn.Sequential) and isinstance(kept[1], KeptBatchNorm)
    assert kept[1].channels.tolist() == [1, 3] == list(report.channels())
    assert torch.equal(kept[0].weight[1], layer.weight[1])  # the kept channel is not folded
    forced, _ = fold_into(layer, norm, on_risk="fold")
    assert isinstance(forced, nn.Conv2d)
    with torch.no_grad():
        torch.testing.assert_close(kept(x), norm(layer(x)), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(forced(x), norm(layer(x)), rtol=1e-5, atol=1e-3)


AT_RISK = [2, 5]


def _offset_pair(name: str):
    """A layer and its batch norm (float64) whose channels 2 and 5 sit ~200σ from zero, and an input.

    The offset comes through the weights from a constant input (a conv bias would cancel
    exactly in the float64 fold): the first input channel of each risky channel's group
    carries +K; the risky channels weigh it positively, the others with weights summing to
    zero. The statistics are measured on the layer's output for that input.
    """
    torch.manual_seed(0)
    layer, kind, shape = LAYERS[name]()
    layer, norm = layer.double(), _batch_norm(kind, 8)
    x = torch.randn(shape, dtype=torch.float64)
    groups = getattr(layer, "groups", 1)
    per_in, per_out = layer.weight.shape[1], 8 // groups
    carriers = sorted({(c // per_out) * per_in for c in AT_RISK})
    with torch.no_grad():
        for output in range(8):
            if (output // per_out) * per_in not in carriers:
                continue
            taps = layer.weight[output, 0]
            taps.copy_(taps.abs() if output in AT_RISK else taps - taps.mean())
        noise = layer(x).transpose(0, -1 if name == "linear" else 1).reshape(8, -1).std(dim=1)
        sums = layer.weight[:, 0].reshape(8, -1).sum(dim=1)
        x[:, carriers] += 200 * float((noise[AT_RISK] / sums[AT_RISK]).max())
        out = layer(x).transpose(0, -1 if name == "linear" else 1).reshape(8, -1)
        norm.running_mean.copy_(out.mean(dim=1))
        norm.running_var.copy_(out.var(dim=1))
    return layer, norm, x


def _ulp_bfloat16(value: torch.Tensor) -> torch.Tensor:
    exponent = torch.floor(torch.log2(value.abs().clamp_min(2.0**-126)))
    return 2.0 ** (exponent - 7)


@pytest.mark.parametrize("name", list(LAYERS))
def test_widen_computes_at_risk_channels_in_float32(name: str) -> None:
    layer, norm, x = _offset_pair(name)
    before = {k: v.clone() for k, v in {**layer.state_dict(), **norm.state_dict()}.items()}
    widened, report = fold_into(layer, norm, dtype=torch.bfloat16, on_risk="widen")
    plain, _ = fold_into(layer, norm, dtype=torch.bfloat16, on_risk="fold")
    assert list(report.channels()) == AT_RISK and isinstance(widened, WidenedChannels)
    assert widened.weight.dtype == torch.float32 and widened.layer.weight.dtype == torch.bfloat16
    axis = -1 if name == "linear" else 1
    risky, safe = torch.tensor(AT_RISK), torch.tensor([c for c in range(8) if c not in AT_RISK])
    xb = x.to(torch.bfloat16)
    with torch.no_grad():
        reference = norm(layer(xb.double())).index_select(axis, risky)  # the same rounded input
        got = widened(xb).double()
        folded = plain(xb).double()
        # The same module with its folded part in float64: the widened channels' float32
        # arithmetic, before any rounding to bfloat16.
        wide = copy.deepcopy(widened).double()
        assert wide.weight.dtype == torch.float32  # converting the model keeps the wide copy
        in_float32 = wide(xb.double()).index_select(axis, risky)
    reach = reference.abs().max() + layer(xb.double()).index_select(axis, risky).abs().max() * (
        norm.weight[risky].abs() / norm.running_var[risky].sqrt()
    ).max()
    # float32 level: a few float32 ulps of the 200σ intermediate x·scale.
    assert (in_float32 - reference).abs().max() <= 64 * 2.0**-24 * reach
    # After the final rounding: within one bfloat16 ulp of the exact output ...
    error = (got.index_select(axis, risky) - reference).abs()
    assert bool((error <= _ulp_bfloat16(reference)).all())
    # ... where the bfloat16 fold loses far more (the test could fail: it is the point).
    assert (folded.index_select(axis, risky) - reference).abs().max() > 16 * error.max()
    # The safe channels are the plain fold's, bit for bit.
    assert torch.equal(widened.layer.weight.index_select(0, safe), plain.weight.index_select(0, safe))
    assert torch.equal(got.index_select(axis, safe), folded.index_select(axis, safe))
    after = {**layer.state_dict(), **norm.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing mutated


def test_widened_module_compiles_and_survives_conversions() -> None:
    layer, norm, x = _offset_pair("depthwise")
    widened, _ = fold_into(layer, norm, dtype=torch.bfloat16, on_risk="widen")
    xb = x.to(torch.bfloat16)
    compiled = torch.compile(widened, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(xb), widened(xb), rtol=0, atol=0)
    halved = copy.deepcopy(widened).half()
    assert halved.layer.weight.dtype == torch.float16 and halved.weight.dtype == torch.float32
    assert torch.equal(halved.weight, widened.weight)  # not rounded through float16 and back
    restored = copy.deepcopy(widened)
    restored.load_state_dict(widened.state_dict())
    assert "channels=[2, 5]" in repr(widened)


def test_fold_batch_norms_widens_and_keeps_float32_copies() -> None:
    layer, norm, x = _offset_pair("conv2d")
    model = nn.Sequential(layer, norm, nn.ReLU()).float()
    copied, reports = fold_batch_norms(model, dtype=torch.bfloat16, on_risk="widen")
    assert isinstance(copied[0], WidenedChannels) and isinstance(model[1], nn.BatchNorm2d)
    assert copied[0].weight.dtype == torch.float32 and copied[0].layer.weight.dtype == torch.bfloat16
    assert list(reports["1"].channels()) == AT_RISK
    assert copied(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_bn_portable_module_folds_with_its_epsilon() -> None:
    layer = nn.Linear(5, 3).double()
    state = bn.BatchNormState(
        beta=torch.randn(3, dtype=torch.float64), gamma=torch.rand(3, dtype=torch.float64) + 0.5,
        moving_mean=torch.randn(3, dtype=torch.float64), moving_variance=torch.rand(3, dtype=torch.float64),
    )
    norm = BatchNorm.from_state(state, scale=True, epsilon=0.01).eval()
    folded, _ = fold_into(layer, norm)
    x = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), norm(layer(x)), rtol=1e-12, atol=1e-12)


def test_fold_batch_norms_folds_sequential_pairs() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))
    ).eval()
    copied, reports = fold_batch_norms(model)
    assert sorted(reports) == ["1", "3.1"] and isinstance(copied[1], nn.Identity)
    assert isinstance(model[1], nn.BatchNorm2d)  # the original is untouched
    layer, norm = _risky_pair()
    with pytest.raises(ValueError, match=r"^1: folding"):
        fold_batch_norms(nn.Sequential(layer, norm))


@pytest.mark.parametrize(
    ("call", "error", "named"),
    [
        (lambda: fold_into(nn.ReLU(), nn.BatchNorm2d(4).eval()), TypeError, "layer"),
        (lambda: fold_into(nn.Conv2d(3, 4, 1), nn.ReLU()), TypeError, "batch_norm"),
        (lambda: fold_into(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), ValueError, r"\.eval\(\)"),
        (lambda: fold_into(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5).eval()), ValueError, "channels"),
        (lambda: fold_into(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4).eval(), on_risk="x"), ValueError, "on_risk"),
        (lambda: fold_into(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4).eval(), dtype="half"), TypeError, "dtype"),
        (lambda: fold_into(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False).eval()),
         ValueError, "track_running_stats"),
        (lambda: fold_into(nn.Conv2d(3, 4, 1), BatchNorm(4, data_format="NHWC").eval()),
         ValueError, "data_format"),
        (lambda: fold_batch_norms("model"), TypeError, "model"),
    ],
)
def test_torch_bad_input(call, error, named) -> None:
    with pytest.raises(error, match=named):
        call()

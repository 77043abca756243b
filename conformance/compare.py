"""How close is close enough: errors in units of the dtype's epsilon.

An error is measured as ``|actual − expected| / (eps · max(|expected|, rms))``,
where ``eps`` is the dtype's machine epsilon and ``rms`` the root mean square of
the expected array: relative to each value, but never relative to less than the
array's typical magnitude, so that a value that happens to be near zero
(a normalized output crossing zero) is judged on the scale of its neighbours.
A normalized output is also judged against its input (see
``error_in_epsilons``). NaN must meet NaN and an infinity the same infinity,
exactly.

The tolerances, and why each is what it is, are stated in
``docs/conformance.md`` (generated from ``TOLERANCES`` below).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Machine epsilon per dtype name (bfloat16 has an 8-bit significand).
EPSILON = {
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
    "float32": float(np.finfo(np.float32).eps),
    "float64": float(np.finfo(np.float64).eps),
}

#: Largest accepted error, in epsilons of the compared array's dtype.
TOLERANCES = {
    "float64": 64.0,
    "float32": 64.0,
    "float16": 4.0,
    "bfloat16": 4.0,
}

#: Half-precision gradients where TensorFlow itself differentiates in half
#: precision (tf-slim's legacy path keeps float16 variables, and its backward
#: accumulates uncentered sums op by op in float16).
HALF_PRECISION_BACKWARD_TOLERANCE = 32.0

GRADIENT_OUTPUTS = ("dx", "dgamma", "dbeta", "dscale", "doffset")


def tolerance(dtype: str, output: str, tf_path: str | None) -> float:
    """The tolerance, in epsilons, of one output of one case."""
    leaf = output.rsplit("/", 1)[-1]
    if dtype in ("float16", "bfloat16") and leaf in GRADIENT_OUTPUTS and tf_path == "legacy":
        return HALF_PRECISION_BACKWARD_TOLERANCE
    return TOLERANCES[dtype]


#: Why the tolerances are what they are (rendered into the report).
JUSTIFICATION = """\
TensorFlow's CPU kernels (Eigen) and every backend here sum in different orders
(Eigen's packet-wise tree, NumPy's pairwise sums, XLA's and PyTorch's own
blocking), so a mean or variance over n elements may differ by a few epsilons
(the worst case grows like log₂ n for pairwise sums). One such difference in a
mean or a variance moves every normalized output of its channel by a relative
error of the same order, amplified by |x − μ|/σ, and the moving averages carry
it on through three training steps. `rsqrt` is not correctly rounded on either
side (Eigen uses a fast approximation with a Newton step, backends divide by a
square root). 64 epsilons of float32 (7.6e-6 relative) or float64 cover these
sums over the catalogue's channel sizes with a wide margin while still failing
any formula-level mistake (a wrong Bessel factor, a mis-rounded `1 − decay`,
a one-pass variance, a missing epsilon), which are off by hundreds to millions
of epsilons. float16 and bfloat16 outputs are rounded once from float32 (fused
kernel) or computed op by op in half precision (layer paths): 4 half-precision
epsilons allow a different rounding of the float32 intermediate and one
different intermediate rounding, nothing more.

Normalized outputs (`y`) are also allowed the error that perturbing each input
by the tolerance would cause, `eps·|x|·|∂y/∂x|` with `|∂y/∂x|` estimated per
channel as `std(y)/std(x)`. This matters only where normalizing is
ill-conditioned, a mean thousands of times the spread or a variance far below
epsilon: there TensorFlow's own `x·inv + (offset − mean·inv)` cancels, and a
one-ulp difference in a statistic (a summation order, a float32 `rsqrt` that
Eigen approximates and rounds differently near a half-precision tie) moves `y`
by thousands of its own epsilons while being the same computation.

One exception, for gradients only: on tf-slim's legacy path with float16 input
(batch_weights, or zero-debias without the fused kernel), TensorFlow keeps
float16 variables and differentiates op by op in float16, through uncentered
sums such as Σdy·x − μ·Σdy that cancel. Its float16 gradients there are off
the exact gradient by up to 7e-3 (norm-wise), while bn_portable accumulates in
float32 and is closer to the exact gradient in every such case (asserted by
`tests/test_half_precision_gradients.py` against a float64 computation from the
same inputs). Those outputs are compared with 32 float16 epsilons (3.1e-2):
TensorFlow's own rounding noise, not ours.
"""


def error_in_epsilons(
    actual: np.ndarray,
    expected: np.ndarray,
    dtype: str,
    source: np.ndarray | None = None,
    channel_axis: int | None = None,
) -> float:
    """Worst element error in epsilons of ``dtype``; ``inf`` on a shape, NaN or Inf mismatch.

    ``source``, for a normalized output ``y``, is the input ``x`` it was computed
    from: ``y`` is then also allowed the error that perturbing each ``x`` by the
    tolerance would cause, ``eps·|x|·|∂y/∂x|`` with ``|∂y/∂x|`` estimated as
    ``std(y)/std(x)`` per channel (along ``channel_axis``, when given). That only matters where normalizing is ill-conditioned
    (a mean far larger than the spread, a variance far below epsilon): there
    TensorFlow's own ``x·inv + (offset − mean·inv)`` cancels, and a one-ulp
    difference in a statistic moves ``y`` by thousands of its own epsilons.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    expected_nan, actual_nan = np.isnan(expected), np.isnan(actual)
    if np.any(expected_nan != actual_nan):
        return float("inf")
    expected_inf = np.isinf(expected)
    if np.any(expected_inf != np.isinf(actual)) or np.any(expected[expected_inf] != actual[expected_inf]):
        return float("inf")
    finite = ~(expected_nan | expected_inf)
    if not np.any(finite):
        return 0.0
    rms = float(np.sqrt(np.mean(expected[finite] ** 2)))
    magnitude = np.maximum(np.abs(expected), max(rms, np.finfo(np.float64).tiny))
    if source is not None and source.shape == expected.shape:
        magnitude = np.maximum(magnitude, _input_sensitivity(source, expected, finite, channel_axis))
    error = np.abs(actual - expected) / (EPSILON[dtype] * magnitude)
    return float(np.max(error[finite]))


def _input_sensitivity(source, expected, finite, channel_axis):
    """``|x|·std(y)/std(x)``, per channel when the channel axis is known."""
    x = np.where(finite, np.asarray(source, dtype=np.float64), np.nan)
    y = np.where(finite, expected, np.nan)
    axes = None
    if channel_axis is not None and x.ndim > 1:
        channel = channel_axis % x.ndim
        axes = tuple(a for a in range(x.ndim) if a != channel)
    with np.errstate(all="ignore"):
        ratio = np.nanstd(y, axis=axes, keepdims=True) / np.nanstd(x, axis=axes, keepdims=True)
    ratio = np.where(np.isfinite(ratio), ratio, 0.0)
    return np.nan_to_num(np.abs(x) * ratio)


def channel_axis(case) -> int | None:
    """Where a case's channels are, when the case or its keywords say (layer and fused ops,
    other frameworks' conventions)."""
    if "channel_axis" in case:
        return case["channel_axis"]  # type: ignore[no-any-return]
    data_format = case["kwargs"].get("data_format")
    if data_format is None:
        return None
    return 1 if data_format.startswith("NC") else -1


def source_name(output: str) -> str:
    """The input a normalized output came from: ``step2/y`` ← ``step2/x``, ``y`` ← ``x``."""
    return output[: -len("y")] + "x"


#: How far (in epsilons) a regenerated array may be from the committed one.
#: TensorFlow's Eigen CPU kernels pick their vector width and fused multiply-adds
#: from the processor: the same TensorFlow wheel gives bit-identical goldens on
#: one processor, but on 2^16-value fused cases an AVX-512 Xeon and an AVX2 EPYC
#: differ by up to about 5 epsilons of the scale (training and inference alike),
#: and the float64 moving variances that four renorm steps with clipping produce
#: by up to 8.1 on another AVX2 EPYC. 16 is well inside every conformance
#: tolerance (64 epsilons), so which processor generated a golden never decides
#: a verdict.
PROCESSOR_ULPS = 16


def close_across_processors(
    committed: np.ndarray,
    regenerated: np.ndarray,
    source: np.ndarray | None = None,
    channel_axis: int | None = None,
) -> float | None:
    """The difference in epsilons, or None when not within ``PROCESSOR_ULPS``.

    Measured in epsilons of the array's largest magnitude. A normalized output
    ``y`` (``source``: the ``x`` it came from) may instead be measured as the
    conformance suite measures it (``compare.error_in_epsilons``, which also
    allows ``eps·|x|·|∂y/∂x|``): on an ill-conditioned batch, TensorFlow's own
    one-ulp difference in a statistic moves y by about the ratio of the mean
    to the spread in epsilons of y (1,460 epsilons of the scale at a ratio of
    10⁴ between an AVX-512 Xeon and an AVX2 EPYC), the same computation
    rounded differently. The smaller of the two is the difference.

    NaN and infinities must stand at the same places with the same values; only
    finite floating values may differ.
    """
    if committed.dtype.kind != "f" or committed.dtype != regenerated.dtype:
        return None
    a, b = committed.astype(np.float64), regenerated.astype(np.float64)
    finite = np.isfinite(a)
    if not np.array_equal(finite, np.isfinite(b)) or not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        return None
    difference = float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))
    if difference == 0.0:
        return 0.0
    scale = float(np.max(np.abs(a[finite]), initial=0.0)) * float(np.finfo(committed.dtype).eps)
    measures = [difference / scale] if scale > 0.0 else []
    if source is not None and source.shape == committed.shape and committed.dtype.name in EPSILON:
        measures.append(error_in_epsilons(b, a, committed.dtype.name, source, channel_axis))
    error = min(measures, default=float("inf"))
    return error if error <= PROCESSOR_ULPS else None


def stored_differences(
    committed: dict[str, np.ndarray],
    regenerated: dict[str, np.ndarray],
    source_of: Callable[[str], tuple[np.ndarray | None, int | None]] = lambda key: (None, None),
) -> tuple[list[str], list[tuple[str, float]]]:
    """Regenerated arrays against committed ones, key by key: the keys that differ beyond
    ``PROCESSOR_ULPS`` (or are on one side only), and the keys within it with their
    difference in epsilons. ``source_of(key)``: the ``x`` a normalized output came from
    and its channel axis, or ``(None, None)``."""
    if sorted(committed) != sorted(regenerated):
        return [f"other arrays: {sorted(set(committed) ^ set(regenerated))[:5]}"], []
    differences: list[str] = []
    close: list[tuple[str, float]] = []
    for key in sorted(committed):
        old, new = np.asarray(committed[key]), np.asarray(regenerated[key])
        if old.dtype == new.dtype and old.shape == new.shape and np.array_equal(old, new, equal_nan=old.dtype.kind == "f"):
            continue
        source, axis = source_of(key)
        ulps = close_across_processors(old, new, source, axis) if old.shape == new.shape else None
        if ulps is None:
            differences.append(key)
        else:
            close.append((key, ulps))
    return differences, close


def difference_lines(label: str, beyond: list[str], close: list[tuple[str, float]], shown: int = 10) -> list[str]:
    """The report of ``stored_differences`` for one file: every array within
    ``PROCESSOR_ULPS`` with its epsilons, then the first ``shown`` beyond it."""
    lines = [f"  ~ {label}: {key}: within {ulps:.2f} epsilons (processor-dependent vectorization)" for key, ulps in close]
    lines += [f"  - {label}: {key}" for key in beyond[:shown]]
    return lines + [f"  - {label}: {len(beyond) - shown} more"] * (len(beyond) > shown)

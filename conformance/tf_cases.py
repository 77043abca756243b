"""One catalogue case through TensorFlow: its inputs drawn from its seed, its runner, its float64 truth.

``run_case`` is what the generator runs for every case, in worker processes
too; ``generate_inputs`` is NumPy only (the runner replays the stored inputs
and needs no random numbers).
"""

from __future__ import annotations

import zlib

import numpy as np

from conformance.tf_layer import run_batch_norm, run_batch_norm_grad
from conformance.tf_ops import (
    run_batch_normalization,
    run_fused_batch_norm,
    run_fused_batch_norm_grad,
    run_moments,
    run_weighted_moments,
)
from conformance.tf_session import Feeder, error_record, session, tf_modules

_SPECIAL = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def generate_array(seed: int, name: str, spec: dict) -> np.ndarray:
    """Draw one input array; see ``catalogue.ARRAY_SPEC_DOC``."""
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8"))]))
    )
    shape = tuple(spec["shape"])
    dist = spec["dist"]
    if dist == "normal":
        loc = np.float64(spec["loc"])
        scale = np.float64(spec["scale"])
        if "channel_axis" in spec:
            axis = spec["channel_axis"]
            c = shape[axis]
            bshape = [1] * len(shape)
            bshape[axis] = c
            lo, hi = spec["channel_scale_range"]
            loc = loc + spec["channel_loc_spread"] * rng.standard_normal(c).reshape(bshape)
            scale = scale * rng.uniform(lo, hi, c).reshape(bshape)
        values = loc + scale * rng.standard_normal(shape)
    elif dist == "uniform":
        values = rng.uniform(spec["low"], spec["high"], shape)
    elif dist == "loguniform":
        values = np.exp(rng.uniform(np.log(spec["low"]), np.log(spec["high"]), shape))
    elif dist == "grid":
        k = rng.integers(spec["kmin"], spec["kmax"], size=shape, endpoint=True)
        values = spec["loc"] + spec["step"] * k.astype(np.float64)
    elif dist == "integers":
        values = rng.integers(spec["low"], spec["high"], size=shape, endpoint=True).astype(
            np.float64
        )
    elif dist == "constant":
        values = np.full(shape, spec["value"], dtype=np.float64)
    else:
        raise ValueError(f"unknown dist {dist!r} for array {name!r}")
    values = np.array(values, dtype=np.float64).reshape(shape)
    for index, value in spec.get("special", ()):
        values.reshape(-1)[index] = _SPECIAL.get(value, value) if isinstance(value, str) else value
    if "quantize" in spec:
        values = values.astype(_np_dtype(spec["quantize"])).astype(np.float64)
    return values.astype(_np_dtype(spec["dtype"]))


def generate_inputs(case: dict) -> dict:
    seed = case["data"]["seed"]
    return {
        name: generate_array(seed, name, spec)
        for name, spec in sorted(case["data"]["arrays"].items())
    }


def _fused_truth(case, inputs, with_gradients):
    """The fused kernel's math in float64, from TensorFlow's float64 ops.

    TensorFlow has no float64 fused kernel, so the truth is ``tf.nn.moments``
    and ``tf.nn.batch_normalization`` on the float64 inputs (training only),
    with the kernel's Bessel factor on the returned variance; the gradients
    are ``tf.gradients`` through that composite.
    """
    tf, _ = tf_modules()
    kw = case["kwargs"]
    if not kw["is_training"] or kw.get("exponential_avg_factor", 1.0) != 1.0:
        raise ValueError(f"{case['id']}: a float64 truth is made for plain training only")
    x_value = inputs["x"]
    channel = 1 if kw["data_format"].startswith("NC") else x_value.ndim - 1
    axes = [axis for axis in range(x_value.ndim) if axis != channel]
    count = int(np.prod([x_value.shape[axis] for axis in axes]))
    shape = [1] * x_value.ndim
    shape[channel] = x_value.shape[channel]
    graph = tf.Graph()
    with graph.as_default():
        feed = Feeder(tf)
        x = feed(x_value, "x")
        scale = feed(inputs["scale"], "scale")
        offset = (
            feed(inputs["offset"], "offset") if "offset" in inputs
            else tf.zeros([x_value.shape[channel]], tf.float64)
        )
        mean, variance = tf.nn.moments(x, axes=axes, keepdims=True)
        y = tf.nn.batch_normalization(
            x, mean, variance, tf.reshape(offset, shape), tf.reshape(scale, shape),
            variance_epsilon=kw["epsilon"],
        )
        flat_mean, flat_variance = tf.reshape(mean, [-1]), tf.reshape(variance, [-1])
        fetch = {"y": y, "batch_mean": flat_mean,
                 "batch_variance": flat_variance * (count / max(count - 1, 1))}
        if with_gradients:
            dx, dscale, doffset = tf.gradients(y, [x, scale, offset], grad_ys=feed(inputs["dy"], "dy"))
            fetch = {"mean": flat_mean, "variance": flat_variance, "dx": dx, "dscale": dscale,
                     "doffset": doffset, "autodiff/dx": dx, "autodiff/dscale": dscale,
                     "autodiff/doffset": doffset}
        with session(tf, graph) as sess:
            outputs = sess.run(fetch, feed.feed)
    return outputs, {"how": "tf.nn.moments + tf.nn.batch_normalization in float64"}


def run_truth(case, inputs):
    """TensorFlow's own float64 result for ``case``'s inputs cast to float64.

    Layer cases run tf-slim with ``fused=False`` (TensorFlow's fused kernel has
    no float64): the same statistics and normalization, on the non-fused path.
    """
    wide = {name: np.asarray(value, dtype=np.float64) for name, value in inputs.items()}
    op = case["op"]
    if op == "fused_batch_norm":
        return _fused_truth(case, wide, with_gradients=False)
    if op == "fused_batch_norm_grad":
        return _fused_truth(case, wide, with_gradients=True)
    kwargs = dict(case["kwargs"])
    fused = op in ("batch_norm", "batch_norm_grad") and kwargs["fused"]
    if fused:
        kwargs["fused"] = False
    outputs, meta = RUNNERS[op](dict(case, dtype="float64", kwargs=kwargs), wide)
    how = f"the same {op} call in float64"
    if fused:
        # y and the gradients are the same functions on both paths, but the
        # state is not: the fused paths' moving variance differs from the
        # non-fused path's by more than rounding, so it gets no truth.
        outputs = {name: value for name, value in outputs.items() if "state/" not in name}
        how += " with fused=False; outputs and gradients only (the state differs by path)"
    return outputs, dict(meta, how=how)


RUNNERS = {
    "moments": run_moments,
    "weighted_moments": run_weighted_moments,
    "batch_normalization": run_batch_normalization,
    "fused_batch_norm": run_fused_batch_norm,
    "fused_batch_norm_grad": run_fused_batch_norm_grad,
    "batch_norm": run_batch_norm,
    "batch_norm_grad": run_batch_norm_grad,
}


def run_case(case: dict) -> dict:
    """Run one case: stored arrays (inputs and outputs) and manifest metadata."""
    inputs = generate_inputs(case)
    runner = RUNNERS[case["op"]]
    error = None
    outputs, meta = {}, {}
    try:
        outputs, meta = runner(case, inputs)
    except Exception as exc:  # TF's own exception is the golden
        if not case.get("expect_error"):
            raise RuntimeError(f"case {case['id']} raised unexpectedly: {exc!r}") from exc
        error = error_record(exc)
    if case.get("expect_error") and error is None:
        raise RuntimeError(f"case {case['id']} is marked expect_error but TF did not raise")
    if case.get("truth") == "float64":
        truth, truth_meta = run_truth(case, inputs)
        missing = sorted(set(truth) - set(outputs))
        if missing:
            raise RuntimeError(f"{case['id']}: the float64 truth has extra outputs {missing}")
        outputs.update({f"truth/{name}": value for name, value in truth.items()})
        meta = dict(meta, truth=truth_meta)
    clash = set(inputs) & set(outputs)
    if clash:
        raise RuntimeError(f"{case['id']}: output names clash with inputs: {sorted(clash)}")
    arrays = dict(inputs)
    arrays.update(outputs)
    return {"id": case["id"], "arrays": arrays, "meta": meta, "error": error}

"""TensorFlow golden-output generator for the bn_portable conformance suite.

Run from the repository root with the TensorFlow environment::

    python -m conformance.generate [--out DIR] [--check] [--only SUBSTRING] [--jobs N]

Every case of ``conformance.catalogue`` is run in a fresh ``tf.Graph`` and
``tf.compat.v1.Session`` (graph mode, one intra-op and one inter-op thread,
``TF_ENABLE_ONEDNN_OPTS=0``), its inputs generated with numpy from the case's
seed and fed through placeholders.  Inputs and outputs go to
``<out>/<op>.npz`` under the keys ``"<case id>|<array name>"``; everything
else (versions, settings, hashes, what TF did) goes to ``<out>/manifest.json``.
``--check`` regenerates into a temporary folder and compares: every array must be
bit-identical, except that a floating array may differ by at most
``PROCESSOR_ULPS`` epsilons of its largest magnitude, or a normalized output
as many in the conformance suite's measure (see ``close_across_processors``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
import zipfile
import zlib

# Must be set before TensorFlow is imported (here, in the workers, anywhere).
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from conformance import catalogue
from conformance.compare import (
    PROCESSOR_ULPS,
    channel_axis,
    close_across_processors,
    difference_lines,
    source_name,
)
from conformance.tf_slim_compat import import_tf_slim

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SESSION_THREADS = 1
PROGRESS_EVERY = 50

STATE_FIELDS = (
    "beta",
    "gamma",
    "moving_mean",
    "moving_variance",
    "moving_mean_biased",
    "local_step",
    "moving_stddev",
    "renorm_mean",
    "renorm_stddev",
)
FUSED_FORWARD_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})

SETTINGS = {
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "intra_op_parallelism_threads": SESSION_THREADS,
    "inter_op_parallelism_threads": SESSION_THREADS,
    "execution": "graph mode (tf.compat.v1.disable_eager_execution), fresh tf.Graph and "
    "Session per case, default grappler and autograph",
    "inputs": "every input array is fed through a placeholder of its full static shape",
    "tf_slim_patches": [
        "sys.modules['tf_keras.legacy_tf_layers'(.normalization)] -> tf_keras.src.legacy_tf_layers",
        "tensorflow.python.framework.ops.Tensor = tensorflow.python.framework.tensor.Tensor",
        "tensorflow.python.ops.control_flow_ops.cond = tf.cond",
    ],
    "batch_norm_steps": "training step: sess.run([y] + UPDATE_OPS); inference step: "
    "sess.run(y) on a second call with reuse=True (same variables); variables read after "
    "every step",
}

STORAGE = {
    "files": "<op>.npz per op (zip of .npy members, fixed timestamps, sorted keys)",
    "key": "<case id>|<array name>",
    "bfloat16": "bfloat16 arrays (inputs and outputs) are stored as float32 arrays "
    "holding exactly the bfloat16 values; arrays[name].logical_dtype says 'bfloat16'",
    "array_sha256": "sha256 of (dtype.str + '|' + ','.join(shape) + '|') encoded as "
    "ASCII, followed by the C-order bytes of the stored array",
    "case_sha256": "sha256 of the case dict as canonical JSON (sort_keys, separators "
    "(',', ':'), no NaN), see conformance.catalogue.canonical_json",
}


# --------------------------------------------------------------------------
# input generation (numpy only)

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


# --------------------------------------------------------------------------
# TensorFlow (imported lazily: only the processes that run cases need it)

_TF = {}


def _tf_modules():
    if _TF:
        return _TF["tf"], _TF["slim"]
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    tf.get_logger().setLevel("ERROR")
    import importlib

    tf_slim = import_tf_slim(tf)
    slim_layers = importlib.import_module("tf_slim.layers.layers")

    # Spy (no behaviour change): record when tf-slim takes its own fused path.
    original = slim_layers._fused_batch_norm

    def spying_fused_batch_norm(*args, **kwargs):
        _TF["slim_fused_calls"] += 1
        return original(*args, **kwargs)

    slim_layers._fused_batch_norm = spying_fused_batch_norm
    _TF.update(tf=tf, slim=tf_slim, slim_fused_calls=0)
    return tf, tf_slim


def versions() -> dict:
    from importlib import metadata

    tf, _ = _tf_modules()
    import ml_dtypes
    import tf_keras

    return {
        "ml_dtypes": ml_dtypes.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "tf_slim": metadata.version("tf-slim"),
    }


def _session(tf, graph):
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=SESSION_THREADS,
        inter_op_parallelism_threads=SESSION_THREADS,
    )
    return tf.compat.v1.Session(graph=graph, config=config)


class _Feeder:
    """Placeholders with full static shapes, and their feed dict."""

    def __init__(self, tf):
        self.tf = tf
        self.feed = {}

    def __call__(self, array, name):
        ph = self.tf.compat.v1.placeholder(
            self.tf.as_dtype(array.dtype), shape=array.shape, name=name.replace("/", "_")
        )
        self.feed[ph] = array
        return ph


def _fused_ops(graph):
    return sorted({op.type for op in graph.get_operations() if op.type in FUSED_FORWARD_OPS})


# --------------------------------------------------------------------------
# one runner per op: (case, inputs) -> (outputs, metadata)


def run_moments(case, inputs):
    tf, _ = _tf_modules()
    kw = case["kwargs"]
    graph = tf.Graph()
    with graph.as_default():
        feed = _Feeder(tf)
        mean, variance = tf.nn.moments(
            feed(inputs["x"], "x"), axes=kw["axes"], keepdims=kw["keepdims"]
        )
        with _session(tf, graph) as sess:
            mean_v, var_v = sess.run([mean, variance], feed.feed)
    return {"mean": mean_v, "variance": var_v}, {}


def run_weighted_moments(case, inputs):
    tf, _ = _tf_modules()
    kw = case["kwargs"]
    graph = tf.Graph()
    with graph.as_default():
        feed = _Feeder(tf)
        mean, variance = tf.nn.weighted_moments(
            feed(inputs["x"], "x"),
            axes=kw["axes"],
            frequency_weights=feed(inputs["frequency_weights"], "frequency_weights"),
            keepdims=kw["keepdims"],
        )
        with _session(tf, graph) as sess:
            mean_v, var_v = sess.run([mean, variance], feed.feed)
    return {"mean": mean_v, "variance": var_v}, {}


def run_batch_normalization(case, inputs):
    tf, _ = _tf_modules()
    graph = tf.Graph()
    with graph.as_default():
        feed = _Feeder(tf)
        args = {
            name: feed(inputs[name], name) if name in inputs else None
            for name in ("x", "mean", "variance", "offset", "scale")
        }
        y = tf.nn.batch_normalization(
            args["x"],
            args["mean"],
            args["variance"],
            args["offset"],
            args["scale"],
            variance_epsilon=case["kwargs"]["variance_epsilon"],
        )
        with _session(tf, graph) as sess:
            y_v = sess.run(y, feed.feed)
    return {"y": y_v}, {}


def run_fused_batch_norm(case, inputs):
    tf, _ = _tf_modules()
    kw = case["kwargs"]
    graph = tf.Graph()
    with graph.as_default():
        feed = _Feeder(tf)
        args = {
            name: feed(inputs[name], name) if name in inputs else None
            for name in ("x", "scale", "offset", "mean", "variance")
        }
        y, batch_mean, batch_variance = tf.compat.v1.nn.fused_batch_norm(
            args["x"],
            args["scale"],
            args["offset"],
            mean=args["mean"],
            variance=args["variance"],
            epsilon=kw["epsilon"],
            data_format=kw["data_format"],
            is_training=kw["is_training"],
            exponential_avg_factor=kw["exponential_avg_factor"],
        )
        with _session(tf, graph) as sess:
            y_v, m_v, v_v = sess.run([y, batch_mean, batch_variance], feed.feed)
    return {"y": y_v, "batch_mean": m_v, "batch_variance": v_v}, {}


def run_fused_batch_norm_grad(case, inputs):
    tf, _ = _tf_modules()
    kw = case["kwargs"]
    is_training = kw["is_training"]
    graph = tf.Graph()
    outputs, meta = {}, {}
    with graph.as_default():
        feed = _Feeder(tf)
        x = feed(inputs["x"], "x")
        dy = feed(inputs["dy"], "dy")
        scale = feed(inputs["scale"], "scale")
        channels = inputs["scale"].shape[0]
        offset = tf.zeros([channels], tf.float32)
        empty = tf.zeros([0], tf.float32)
        with _session(tf, graph) as sess:
            if is_training:
                # The batch statistics exactly as TF's forward computes them.
                forward = tf.raw_ops.FusedBatchNormV3(
                    x=x,
                    scale=scale,
                    offset=offset,
                    mean=empty,
                    variance=empty,
                    epsilon=kw["epsilon"],
                    exponential_avg_factor=1.0,
                    data_format=kw["data_format"],
                    is_training=True,
                )
                mean_v, var_v = sess.run(
                    [forward.reserve_space_1, forward.reserve_space_2], feed.feed
                )
                outputs["mean"], outputs["variance"] = mean_v, var_v
            else:
                mean_v, var_v = inputs["mean"], inputs["variance"]
            mean = feed(mean_v, "mean")
            variance = feed(var_v, "variance")
            grad = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy,
                x=x,
                scale=scale,
                reserve_space_1=mean,
                reserve_space_2=variance,
                reserve_space_3=empty,
                epsilon=kw["epsilon"],
                data_format=kw["data_format"],
                is_training=is_training,
            )
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                scale,
                offset,
                mean=None if is_training else mean,
                variance=None if is_training else variance,
                epsilon=kw["epsilon"],
                data_format=kw["data_format"],
                is_training=is_training,
            )
            auto = tf.gradients(y, [x, scale, offset], grad_ys=dy)
            auto_values = sess.run(auto, feed.feed)
            try:
                values = sess.run(
                    [grad.x_backprop, grad.scale_backprop, grad.offset_backprop], feed.feed
                )
            except tf.errors.InvalidArgumentError as exc:
                # The CPU kernel takes channels-last only when is_training=False;
                # tf.gradients transposes to NHWC/NDHWC and back, so the
                # reference for dx/dscale/doffset is then the autodiff result.
                if is_training or kw["data_format"] not in ("NCHW", "NCDHW"):
                    raise
                meta = {
                    "raw_op_error": _error_record(exc),
                    "reference": "autodiff (tf.gradients transposes to channels-last)",
                }
                values = auto_values
    values = list(values) + list(auto_values)
    for name, value in zip(
        ("dx", "dscale", "doffset", "autodiff/dx", "autodiff/dscale", "autodiff/doffset"), values
    ):
        outputs[name] = value
    return outputs, meta


def _state_field(var_name: str) -> str:
    name = var_name.split(":")[0]
    if name.endswith("moving_mean/biased"):
        return "moving_mean_biased"
    if name.endswith("moving_mean/local_step"):
        return "local_step"
    field = name.rsplit("/", 1)[-1]
    if field not in STATE_FIELDS:
        raise RuntimeError(f"unexpected batch_norm variable {var_name!r}")
    return field


def _slim_call_kwargs(tf, case, inputs):
    kw = case["kwargs"]
    call = {
        "decay": kw["decay"],
        "center": kw["center"],
        "scale": kw["scale"],
        "epsilon": kw["epsilon"],
        "fused": kw["fused"],  # always explicit: tf-slim's own default (None) means True
        "data_format": kw["data_format"],
        "zero_debias_moving_mean": kw["zero_debias_moving_mean"],
        "renorm": kw["renorm"],
        "scope": "BatchNorm",
    }
    if kw["renorm"]:
        call["renorm_clipping"] = kw["renorm_clipping"]
        call["renorm_decay"] = kw["renorm_decay"]
    if kw.get("activation_fn") == "relu":
        call["activation_fn"] = tf.nn.relu
    elif kw.get("activation_fn") is not None:
        raise ValueError(f"unknown activation_fn {kw['activation_fn']!r}")
    if case["init"]:
        call["param_initializers"] = {
            name: tf.compat.v1.constant_initializer(inputs[f"init/{name}"]) for name in case["init"]
        }
    return call


def _batch_norm_metadata(case, graph, variables, x_rank):
    kw = case["kwargs"]
    fused_ops = _fused_ops(graph)
    weighted = bool(kw.get("weighted"))
    if _TF["slim_fused_calls"]:
        path = "slim_fused"
    elif not weighted and not kw["zero_debias_moving_mean"]:
        path = "keras_fused" if fused_ops else "keras_layer"
    else:
        path = "legacy"
    predicted = catalogue.predict_tf_path(
        x_rank, kw["fused"], weighted, kw["zero_debias_moving_mean"], kw["renorm"], case["dtype"]
    )
    if path != predicted or (path in ("slim_fused", "keras_fused")) != bool(fused_ops):
        raise RuntimeError(
            f"{case['id']}: TF took path {path} (fused ops {fused_ops}), "
            f"catalogue predicted {predicted}"
        )
    return {
        "fused_kernel_ran": bool(fused_ops),
        "fused_ops": fused_ops,
        "tf_path": path,
        "variable_dtypes": {field: var.dtype.base_dtype.name for field, var in variables.items()},
        "variable_names": {field: var.name for field, var in variables.items()},
    }


def _collect_variables(tf):
    variables = {}
    for var in tf.compat.v1.global_variables():
        field = _state_field(var.name)
        if field in variables:
            raise RuntimeError(f"two variables for field {field}: {var.name}")
        variables[field] = var
    return dict(sorted(variables.items()))


def run_batch_norm(case, inputs):
    tf, slim = _tf_modules()
    _TF["slim_fused_calls"] = 0
    kw = case["kwargs"]
    steps = case["steps"]
    x0 = inputs["step0/x"]
    weighted = bool(kw.get("weighted"))
    graph = tf.Graph()
    outputs = {}
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.as_dtype(x0.dtype), x0.shape, name="x")
        weights = (
            tf.compat.v1.placeholder(tf.as_dtype(x0.dtype), [x0.shape[0]], name="batch_weights")
            if weighted
            else None
        )
        call = _slim_call_kwargs(tf, case, inputs)
        y_of = {}
        update_ops = []
        for training in (True, False):
            if not any(step["is_training"] == training for step in steps):
                continue
            y_of[training] = slim.layers.batch_norm(
                x, is_training=training, batch_weights=weights, reuse=True if y_of else None, **call
            )
            ops_now = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
            if training:
                update_ops = list(ops_now)
            elif len(ops_now) != len(update_ops):
                raise RuntimeError(f"{case['id']}: the inference call added update ops")
        variables = _collect_variables(tf)
        meta = _batch_norm_metadata(case, graph, variables, x0.ndim)
        meta["update_ops"] = len(update_ops)
        with _session(tf, graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for field, value in sess.run(variables).items():
                outputs[f"init/state/{field}"] = value
            for k, step in enumerate(steps):
                feed = {x: inputs[f"step{k}/x"]}
                if weighted:
                    feed[weights] = inputs[f"step{k}/batch_weights"]
                if step["is_training"]:
                    y_v = sess.run([y_of[True], *update_ops], feed)[0]
                else:
                    y_v = sess.run(y_of[False], feed)
                outputs[f"step{k}/y"] = y_v
                for field, value in sess.run(variables).items():
                    outputs[f"step{k}/state/{field}"] = value
    return outputs, meta


def run_batch_norm_grad(case, inputs):
    tf, slim = _tf_modules()
    _TF["slim_fused_calls"] = 0
    kw = case["kwargs"]
    weighted = bool(kw.get("weighted"))
    graph = tf.Graph()
    outputs = {}
    with graph.as_default():
        feed = _Feeder(tf)
        x = feed(inputs["x"], "x")
        dy = feed(inputs["dy"], "dy")
        weights = feed(inputs["batch_weights"], "batch_weights") if weighted else None
        y = slim.layers.batch_norm(
            x,
            is_training=kw["is_training"],
            batch_weights=weights,
            **_slim_call_kwargs(tf, case, inputs),
        )
        update_ops = list(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS))
        variables = _collect_variables(tf)
        names = ["dx"]
        wrt = [x]
        if kw["scale"]:
            names.append("dgamma")
            wrt.append(variables["gamma"])
        if kw["center"]:
            names.append("dbeta")
            wrt.append(variables["beta"])
        grads = tf.gradients(y, wrt, grad_ys=dy)
        if any(g is None for g in grads):
            raise RuntimeError(f"{case['id']}: no gradient for {names}")
        meta = _batch_norm_metadata(case, graph, variables, inputs["x"].ndim)
        meta["update_ops"] = len(update_ops)
        with _session(tf, graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for field, value in sess.run(variables).items():
                outputs[f"init/state/{field}"] = value
            values = sess.run([y, *grads, *update_ops], feed.feed)
            outputs["y"] = values[0]
            for name, value in zip(names, values[1 : 1 + len(grads)]):
                outputs[name] = value
            for field, value in sess.run(variables).items():
                outputs[f"state/{field}"] = value
    return outputs, meta


def _fused_truth(case, inputs, with_gradients):
    """The fused kernel's math in float64, from TensorFlow's float64 ops.

    TensorFlow has no float64 fused kernel, so the truth is ``tf.nn.moments``
    and ``tf.nn.batch_normalization`` on the float64 inputs (training only),
    with the kernel's Bessel factor on the returned variance; the gradients
    are ``tf.gradients`` through that composite.
    """
    tf, _ = _tf_modules()
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
        feed = _Feeder(tf)
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
        with _session(tf, graph) as sess:
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


def _clean_message(message: str) -> str:
    """TF's message without autograph frames, node tracebacks or addresses."""
    text = message.strip()
    if text.startswith("in user code:"):
        text = text.split("\n\n")[-1].strip()
    if "\nNode: '" in text:  # session.run errors: keep the kernel's own message
        text = text.split("\nNode: '", 1)[1].split("\n", 1)[1]
    text = re.split(r"\n\s*\[\[|\n+\s*Detected at node|\n+Original stack trace", text)[0]
    text = re.sub(r"0x[0-9a-fA-F]+", "0x?", text)
    text = re.sub(r"^\w+(Error|Exception): ", "", text)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _error_record(exc: BaseException) -> dict:
    return {
        "class": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": _clean_message(str(exc)),
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
        error = _error_record(exc)
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


# --------------------------------------------------------------------------
# storage


def stored_array(array: np.ndarray):
    """(array as stored, logical dtype name or None)."""
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":
        return np.array(array.astype(np.float32), order="C"), "bfloat16"
    return np.array(array, order="C"), None


def array_sha256(array: np.ndarray) -> str:
    header = f"{array.dtype.str}|{','.join(map(str, array.shape))}|".encode("ascii")
    return hashlib.sha256(header + array.tobytes(order="C")).hexdigest()


def write_npz(path: str, arrays: dict) -> None:
    """np.savez_compressed-compatible, but byte-for-byte deterministic."""
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, arrays[key], allow_pickle=False)
            zf.writestr(info, buffer.getvalue())
    os.replace(tmp, path)


def read_npz(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def load_goldens(folder: str):
    manifest_path = os.path.join(folder, MANIFEST)
    manifest = None
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    arrays = {op: read_npz(os.path.join(folder, f"{op}.npz")) for op in catalogue.OPS}
    return manifest, arrays


def write_goldens(folder, results, case_by_id, only=None):
    """Write (or, with ``only``, merge into) the goldens in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    old_manifest, old_arrays = load_goldens(folder) if only else (None, None)
    known = set(case_by_id)
    fresh = {r["id"] for r in results}
    cases_meta = {}
    arrays_by_op = {op: {} for op in catalogue.OPS}
    if only and old_manifest:
        for cid, entry in old_manifest.get("cases", {}).items():
            if cid in known and cid not in fresh:
                cases_meta[cid] = entry
        for op, arrays in old_arrays.items():
            for key, value in arrays.items():
                cid = key.split("|", 1)[0]
                if cid in known and cid not in fresh:
                    arrays_by_op[op][key] = value
    for result in results:
        case = case_by_id[result["id"]]
        entry = {
            "op": case["op"],
            "group": case["group"],
            "file": f"{case['op']}.npz",
            "case_sha256": catalogue.case_sha256(case),
            "arrays": {},
        }
        for name, value in sorted(result["arrays"].items()):
            stored, logical = stored_array(value)
            arrays_by_op[case["op"]][f"{case['id']}|{name}"] = stored
            info = {
                "dtype": stored.dtype.name,
                "shape": list(stored.shape),
                "sha256": array_sha256(stored),
            }
            if logical:
                info["logical_dtype"] = logical
            entry["arrays"][name] = info
        if result["meta"]:
            entry["tf"] = result["meta"]
        if result["error"]:
            entry["error"] = result["error"]
        cases_meta[case["id"]] = entry
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "python -m conformance.generate",
        "versions": versions(),
        "settings": SETTINGS,
        "storage": STORAGE,
        "cases": dict(sorted(cases_meta.items())),
    }
    for op, arrays in arrays_by_op.items():
        path = os.path.join(folder, f"{op}.npz")
        if arrays:
            write_npz(path, arrays)
        elif os.path.exists(path):
            os.remove(path)
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True, allow_nan=False)
        fh.write("\n")
    return manifest


# --------------------------------------------------------------------------
# running many cases (optionally in worker processes)


def _worker_init():
    _tf_modules()


def _run_all(cases, jobs):
    total = len(cases)
    start = time.perf_counter()
    results = []

    def progress(done, last=False):
        if done % PROGRESS_EVERY == 0 or last:
            print(f"[{done}/{total}] {time.perf_counter() - start:6.1f}s", flush=True)

    if jobs <= 1 or total < 2:
        for i, case in enumerate(cases, 1):
            results.append(run_case(case))
            progress(i, i == total)
        return results
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, initializer=_worker_init) as pool:
        for i, result in enumerate(pool.imap(run_case, cases, chunksize=4), 1):
            results.append(result)
            progress(i, i == total)
    return results


# --------------------------------------------------------------------------
# --check


def _diff_json(a, b, path="", out=None, limit=50):
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                out.append(f"{sub}: only in regenerated")
            elif key not in b:
                out.append(f"{sub}: only in committed")
            else:
                _diff_json(a[key], b[key], sub, out, limit)
    elif a != b:
        out.append(f"{path}: committed {json.dumps(a)[:120]} != regenerated {json.dumps(b)[:120]}")
    return out


def _source_and_channel_axis(arrays: dict, key: str, cases: dict) -> tuple:
    """For ``<case>|…y``: the ``x`` it came from and where its channels are, as the runner pairs them."""
    case_id, name = key.split("|", 1)
    if not name.endswith("y") or case_id not in cases:
        return None, None
    return arrays.get(f"{case_id}|{source_name(name)}"), channel_axis(cases[case_id])


def check(committed_dir, fresh_dir, selected_ids, full) -> tuple[list, int, list]:
    """Differences between committed and regenerated goldens (only ``selected_ids``
    unless ``full``, where cases missing from the regeneration count too), the
    number of identical arrays, and the arrays within ``PROCESSOR_ULPS``."""
    problems, close = [], []
    old_manifest, old_arrays = load_goldens(committed_dir)
    new_manifest, new_arrays = load_goldens(fresh_dir)
    if old_manifest is None:
        return [f"no {MANIFEST} in {committed_dir}"], 0
    selected = set(selected_ids)
    for key in ("format_version", "generator", "versions", "settings", "storage"):
        problems += _diff_json(old_manifest.get(key), new_manifest.get(key), key)
    old_cases = {k: v for k, v in old_manifest.get("cases", {}).items() if k in selected}
    new_cases = {k: v for k, v in new_manifest.get("cases", {}).items() if k in selected}
    if full:
        old_cases = old_manifest.get("cases", {})
    case_problems = _diff_json(old_cases, new_cases, "cases", limit=10**6)
    identical = 0
    cases = {case["id"]: case for case in catalogue.cases()}
    for op in catalogue.OPS:
        old = {k: v for k, v in old_arrays[op].items() if full or k.split("|", 1)[0] in selected}
        new = new_arrays[op]
        for key in sorted(set(old) - set(new)):
            problems.append(f"{op}.npz: {key} only in committed goldens")
        for key in sorted(set(new) - set(old)):
            problems.append(f"{op}.npz: {key} only in regenerated goldens")
        for key in sorted(set(old) & set(new)):
            a, b = old[key], new[key]
            if a.dtype != b.dtype or a.shape != b.shape:
                problems.append(f"{op}.npz: {key}: {a.dtype}{a.shape} != {b.dtype}{b.shape}")
            elif a.tobytes() != b.tobytes() and (
                ulps := close_across_processors(a, b, *_source_and_channel_axis(old, key, cases))
            ) is not None:
                close.append((op, key, ulps))
            elif a.tobytes() != b.tobytes():
                rows_a = a.reshape(-1).view(np.uint8).reshape(a.size, -1)
                rows_b = b.reshape(-1).view(np.uint8).reshape(b.size, -1)
                bad = int(np.count_nonzero((rows_a != rows_b).any(axis=1)))
                problems.append(f"{op}.npz: {key}: {bad} of {a.size} element(s) differ")
            else:
                identical += 1
    # A close array's hash in the manifest differs too; that is the same difference.
    close_hashes = {
        "cases.{}.arrays.{}.sha256:".format(*key.split("|", 1)) for _, key, _ in close
    }
    problems += [line for line in case_problems if not line.startswith(tuple(close_hashes))][:50]
    return problems, identical, close


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="goldens folder (default: conformance/goldens)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary folder and compare with --out",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="SUBSTRING",
        help="only the cases whose id contains SUBSTRING",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default: min(2, CPUs)); results do not depend on it",
    )
    args = parser.parse_args(argv)

    all_cases = catalogue.cases()
    case_by_id = {case["id"]: case for case in all_cases}
    selected = [c for c in all_cases if args.only is None or args.only in c["id"]]
    if not selected:
        print(f"no case id contains {args.only!r}", file=sys.stderr)
        return 2
    print(f"{len(selected)} case(s), {args.jobs} job(s)", flush=True)
    start = time.perf_counter()
    results = _run_all(selected, args.jobs)
    elapsed = time.perf_counter() - start
    if not args.check:
        write_goldens(args.out, results, case_by_id, only=args.only)
        size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
        n_arrays = sum(len(r["arrays"]) for r in results)
        print(
            f"wrote {len(results)} cases, {n_arrays} arrays, {size / 1e6:.2f} MB to "
            f"{args.out} in {elapsed:.1f}s"
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="bn_goldens_") as fresh:
        write_goldens(fresh, results, case_by_id)
        problems, identical, close = check(
            args.out, fresh, [c["id"] for c in selected], full=args.only is None
        )
    if problems:
        print(f"golden check FAILED: {len(problems)} difference(s)")
        for line in problems[:200]:
            print(f"  - {line}")
        if len(problems) > 200:
            print(f"  ... and {len(problems) - 200} more")
    for op, key, ulps in close:
        print(*difference_lines(f"{op}.npz", [], [(key, ulps)]))
    within = f", {len(close)} within {PROCESSOR_ULPS} epsilons" if close else ""
    print(f"golden check: {len(selected)} cases, {identical} arrays identical{within} ({elapsed:.1f}s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

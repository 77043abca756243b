"""tf-slim's ``batch_norm`` layer, forward steps and gradients: ``(case, inputs) -> (outputs, metadata)``.

Each run also records which of TensorFlow's implementations ran (tf-slim's own
fused path, the Keras layer with or without the fused kernel, tf-slim's
composite) and fails unless it is the one ``catalogue.predict_tf_path`` expects.
"""

from __future__ import annotations

from conformance import catalogue
from conformance.tf_session import Feeder, fused_ops, session, slim_fused_calls, tf_modules

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
    kernels = fused_ops(graph)
    weighted = bool(kw.get("weighted"))
    if slim_fused_calls():
        path = "slim_fused"
    elif not weighted and not kw["zero_debias_moving_mean"]:
        path = "keras_fused" if kernels else "keras_layer"
    else:
        path = "legacy"
    predicted = catalogue.predict_tf_path(
        x_rank, kw["fused"], weighted, kw["zero_debias_moving_mean"], kw["renorm"], case["dtype"]
    )
    if path != predicted or (path in ("slim_fused", "keras_fused")) != bool(kernels):
        raise RuntimeError(
            f"{case['id']}: TF took path {path} (fused ops {kernels}), "
            f"catalogue predicted {predicted}"
        )
    return {
        "fused_kernel_ran": bool(kernels),
        "fused_ops": kernels,
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
    tf, slim = tf_modules()
    slim_fused_calls(reset=True)
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
        with session(tf, graph) as sess:
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
    tf, slim = tf_modules()
    slim_fused_calls(reset=True)
    kw = case["kwargs"]
    weighted = bool(kw.get("weighted"))
    graph = tf.Graph()
    outputs = {}
    with graph.as_default():
        feed = Feeder(tf)
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
        with session(tf, graph) as sess:
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


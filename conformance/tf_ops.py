"""TensorFlow's functional ops, one runner per catalogue op: ``(case, inputs) -> (outputs, metadata)``.

``tf.nn.moments``, ``tf.nn.weighted_moments``, ``tf.nn.batch_normalization``,
the fused kernel forward (``tf.compat.v1.nn.fused_batch_norm``) and its
gradient kernel beside ``tf.gradients``, each in a fresh graph and session.
"""

from __future__ import annotations

from conformance.tf_session import Feeder, error_record, session, tf_modules


def run_moments(case, inputs):
    tf, _ = tf_modules()
    kw = case["kwargs"]
    graph = tf.Graph()
    with graph.as_default():
        feed = Feeder(tf)
        mean, variance = tf.nn.moments(
            feed(inputs["x"], "x"), axes=kw["axes"], keepdims=kw["keepdims"]
        )
        with session(tf, graph) as sess:
            mean_v, var_v = sess.run([mean, variance], feed.feed)
    return {"mean": mean_v, "variance": var_v}, {}


def run_weighted_moments(case, inputs):
    tf, _ = tf_modules()
    kw = case["kwargs"]
    graph = tf.Graph()
    with graph.as_default():
        feed = Feeder(tf)
        mean, variance = tf.nn.weighted_moments(
            feed(inputs["x"], "x"),
            axes=kw["axes"],
            frequency_weights=feed(inputs["frequency_weights"], "frequency_weights"),
            keepdims=kw["keepdims"],
        )
        with session(tf, graph) as sess:
            mean_v, var_v = sess.run([mean, variance], feed.feed)
    return {"mean": mean_v, "variance": var_v}, {}


def run_batch_normalization(case, inputs):
    tf, _ = tf_modules()
    graph = tf.Graph()
    with graph.as_default():
        feed = Feeder(tf)
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
        with session(tf, graph) as sess:
            y_v = sess.run(y, feed.feed)
    return {"y": y_v}, {}


def run_fused_batch_norm(case, inputs):
    tf, _ = tf_modules()
    kw = case["kwargs"]
    graph = tf.Graph()
    with graph.as_default():
        feed = Feeder(tf)
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
        with session(tf, graph) as sess:
            y_v, m_v, v_v = sess.run([y, batch_mean, batch_variance], feed.feed)
    return {"y": y_v, "batch_mean": m_v, "batch_variance": v_v}, {}


def run_fused_batch_norm_grad(case, inputs):
    tf, _ = tf_modules()
    kw = case["kwargs"]
    is_training = kw["is_training"]
    graph = tf.Graph()
    outputs, meta = {}, {}
    with graph.as_default():
        feed = Feeder(tf)
        x = feed(inputs["x"], "x")
        dy = feed(inputs["dy"], "dy")
        scale = feed(inputs["scale"], "scale")
        channels = inputs["scale"].shape[0]
        offset = tf.zeros([channels], tf.float32)
        empty = tf.zeros([0], tf.float32)
        with session(tf, graph) as sess:
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
                    "raw_op_error": error_record(exc),
                    "reference": "autodiff (tf.gradients transposes to channels-last)",
                }
                values = auto_values
    values = list(values) + list(auto_values)
    for name, value in zip(
        ("dx", "dscale", "doffset", "autodiff/dx", "autodiff/dscale", "autodiff/doffset"), values
    ):
        outputs[name] = value
    return outputs, meta

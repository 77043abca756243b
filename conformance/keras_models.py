"""TensorFlow-written goldens for porting whole models (``nox -s checkpoints`` runs it).

Run from the repository root in the golden environment::

    python -m conformance.keras_models [--out DIR] [--check]

It writes to tests/data/porting/models:

- ``mobilenet_v2.h5`` and ``mobilenet_v2.keras``: a ``tf_keras.applications``
  MobileNetV2 (alpha 0.35, 32×32×3 input, 10 classes, random initial weights)
  trained for three steps with ``fit``, saved in both formats; and
  ``mobilenet_v2.npz``: for each of its batch-norm layers, its input for a fixed
  batch of two (``input|<layer>``, as the trained model computes it in inference),
  TensorFlow's inference output (``infer|``), the output of one eager training
  call of the layer (``train|``) and the layer's variables after that call
  (``after|<layer>/<variable>``).
- ``keras_modes.npz``: a small Keras model (fused rank 4 NHWC and NCHW, fused
  rank 5, non-fused rank 2, momenta up to 0.9999) given one training batch in
  each way Keras 2 runs (``eager``: a call outside any function; ``function``:
  ``tf.function``; ``fit``: ``Model.fit``; ``xla``: ``tf.function(jit_compile=True)``;
  ``graph``: a TF1 graph and session), with the variables before (``before|``) and
  after (``after|<mode>|<layer>/<variable>``).
- ``slim_ema.npz``: a TF1 checkpoint (``checkpoint|<name>``) of three tf-slim
  batch norms trained for three steps with ``tf.train.ExponentialMovingAverage``
  over the variables of two of them, and TensorFlow's inference outputs for a
  fixed input with the raw variables (``infer|<scope>``) and with the shadow
  values restored (``infer_ema|<scope>``).

``manifest.json`` records versions, options and sha256s. ``--check`` regenerates
into a temporary folder and compares every stored array.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from conformance.checkpoints import (
    _data,
    _layer_input,
    _read_checkpoint,
    _stored_arrays,
    _weights,
    check_regenerated,
    require_no_differences,
)
from conformance.compare import difference_lines, stored_differences

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "porting", "models"
)
STEPS = 3
BATCH = 4
MOBILENET = {"input_shape": (32, 32, 3), "alpha": 0.35, "weights": None, "classes": 10}

#: Keras layers of the modes model: name -> (input shape, BatchNormalization arguments).
MODE_LAYERS = {
    "fused_nhwc": ((6, 4, 4, 3), {"momentum": 0.999}),
    "fused_nchw": ((6, 3, 4, 4), {"axis": 1, "momentum": 0.9999}),
    "fused_rank5": ((6, 2, 3, 3, 3), {"momentum": 0.99}),
    "dense": ((6, 5), {"momentum": 0.999}),
}
MODES = ("eager", "function", "fit", "xla", "graph")

#: tf-slim layers of the EMA checkpoint: scope -> (input shape, batch_norm arguments).
SLIM_EMA_LAYERS = {
    "net/bn1": ((6, 4, 4, 3), {"decay": 0.9, "scale": True, "fused": True}),
    "net/bn2": ((6, 3, 4, 4), {"decay": 0.8, "scale": True, "fused": True, "data_format": "NCHW"}),
    "net/bn3": ((8, 5), {"decay": 0.9, "fused": False}),
}
#: The layers whose variables the EMA tracks (all four of each), and its decay.
EMA_SCOPES = ("net/bn1", "net/bn2")
EMA_DECAY = 0.5


def _import_tf():
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    # One thread and deterministic ops: --check regenerates the same bits.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    return tf


def _variables(prefix: str, layer) -> dict[str, np.ndarray]:
    return {f"{prefix}/{v.name.split('/')[-1].removesuffix(':0')}": v.numpy() for v in layer.weights}


def mobilenet(tf, out: str) -> dict[str, np.ndarray]:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.applications.MobileNetV2(**MOBILENET)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    images = _data("mobilenet_v2", (STEPS * BATCH, *MOBILENET["input_shape"]), 0)
    labels = np.arange(STEPS * BATCH) % MOBILENET["classes"]
    model.fit(images, labels, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    # An uncompiled copy: the files hold the model, not the optimizer's state.
    saved = tf_keras.models.clone_model(model)
    saved.set_weights(model.get_weights())
    saved.save(os.path.join(out, "mobilenet_v2.h5"))
    saved.save(os.path.join(out, "mobilenet_v2.keras"))
    layers = _batch_norm_layers(tf_keras, model)
    inputs = tf_keras.Model(model.inputs, [layer.input for layer in layers])(
        _data("mobilenet_v2", (2, *MOBILENET["input_shape"]), 99), training=False
    )
    arrays = _layer_goldens(layers, [x.numpy() for x in inputs])
    np.savez_compressed(os.path.join(out, "mobilenet_v2.npz"), **arrays)
    return arrays


def _batch_norm_layers(tf_keras, model) -> list:
    return [layer for layer in model.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]


def _layer_goldens(layers, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each layer's input, inference output, the output of one eager training call and
    its variables after that call (which moves its averages)."""
    arrays = {}
    for layer, x in zip(layers, inputs, strict=True):
        arrays[f"input|{layer.name}"] = x
        arrays[f"infer|{layer.name}"] = layer(x, training=False).numpy()
        arrays[f"train|{layer.name}"] = layer(x, training=True).numpy()
        arrays.update({f"after|{k}": v for k, v in _variables(layer.name, layer).items()})
    return arrays


def _check_mobilenet_layers(out: str) -> None:
    """The committed MobileNet checked layer by layer: each batch norm of the ``.h5`` model,
    given its committed input, must give the committed outputs and variables (within
    processor rounding), and the ``.keras`` file must hold the ``.h5`` file's weights."""
    _import_tf()
    import tf_keras

    model = tf_keras.models.load_model(os.path.join(out, "mobilenet_v2.h5"), compile=False)
    same_model = tf_keras.models.load_model(os.path.join(out, "mobilenet_v2.keras"), compile=False)
    if not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), same_model.get_weights(), strict=True)):
        sys.exit("mobilenet_v2.h5 and mobilenet_v2.keras hold different weights")
    layers = _batch_norm_layers(tf_keras, model)
    committed = _stored_arrays(os.path.join(out, "mobilenet_v2.npz"))
    recomputed = _layer_goldens(layers, [committed[f"input|{layer.name}"] for layer in layers])
    beyond, close = stored_differences(committed, recomputed, lambda key: (_layer_input(committed, key), None))
    for line in difference_lines("mobilenet_v2.npz", beyond, close):
        print(line)
    require_no_differences(out, ["mobilenet_v2.npz"] if beyond else [])


def _modes_model(tf_keras):
    inputs = [tf_keras.Input(shape[1:], batch_size=shape[0]) for shape, _ in MODE_LAYERS.values()]
    outputs = [
        tf_keras.layers.BatchNormalization(name=name, **options)(x)
        for x, (name, (_, options)) in zip(inputs, MODE_LAYERS.items())
    ]
    return tf_keras.Model(inputs, outputs)


def _mode_batch() -> list[np.ndarray]:
    return [_data(name, shape, 7) for name, (shape, _) in MODE_LAYERS.items()]


def _mode_state() -> dict[str, dict[str, np.ndarray]]:
    """Keras' initial moving statistics (zeros and ones, where the update weight shows most
    in the mean) and random parameters."""
    state = {}
    for name, (shape, options) in MODE_LAYERS.items():
        channels = shape[options.get("axis", -1)]
        rng = np.random.default_rng(len(name))
        state[name] = {
            "gamma": (1 + 0.1 * rng.standard_normal(channels)).astype(np.float32),
            "beta": (0.1 * rng.standard_normal(channels)).astype(np.float32),
            "moving_mean": np.zeros(channels, np.float32),
            "moving_variance": np.ones(channels, np.float32),
        }
    return state


def _set_state(model, state) -> None:
    for name, values in state.items():
        layer = model.get_layer(name)
        layer.set_weights([values[k] for k in ("gamma", "beta", "moving_mean", "moving_variance")])


def modes(tf, mode_subset=MODES) -> dict[str, np.ndarray]:
    """The variables after one training batch in each mode but ``graph`` (a TF1 process)."""
    import tf_keras

    arrays: dict[str, np.ndarray] = {}
    batch, state = _mode_batch(), _mode_state()
    for name, x in zip(MODE_LAYERS, batch):
        arrays[f"input|{name}"] = x
        arrays.update({f"before|{name}/{k}": v for k, v in state[name].items()})
    for mode in mode_subset:
        model = _modes_model(tf_keras)
        _set_state(model, state)
        if mode == "eager":
            model(batch, training=True)
        elif mode in ("function", "xla"):
            tf.function(lambda xs, m=model: m(xs, training=True), jit_compile=mode == "xla")(batch)
        elif mode == "fit":  # learning rate 0: only the moving statistics change
            model.compile(optimizer=tf_keras.optimizers.SGD(0.0), loss=lambda y, p: tf.reduce_sum(p))
            targets = [np.zeros_like(x) for x in batch]
            model.fit(batch, targets, batch_size=batch[0].shape[0], epochs=1, shuffle=False, verbose=0)
        for name in MODE_LAYERS:
            layer = model.get_layer(name)
            arrays.update({f"after|{mode}|{k}": v for k, v in _variables(name, layer).items()})
    return arrays


def graph_mode(tf) -> dict[str, np.ndarray]:
    """The ``graph`` mode of ``modes`` and the EMA checkpoint: TF1 graphs (eager disabled)."""
    import tf_keras

    v1 = tf.compat.v1
    arrays: dict[str, np.ndarray] = {}
    batch, state = _mode_batch(), _mode_state()
    with tf.Graph().as_default(), v1.Session() as session:
        layers, updates = {}, []
        for (name, (_, options)), x in zip(MODE_LAYERS.items(), batch):
            layers[name] = tf_keras.layers.BatchNormalization(name=name, **options)
            layers[name](tf.constant(x), training=True)
            updates += layers[name].updates
        session.run(v1.global_variables_initializer())
        for name, layer in layers.items():
            for variable in layer.weights:
                field = variable.name.split("/")[-1].removesuffix(":0")
                session.run(variable.assign(state[name][field]))
        session.run(updates)
        for name, layer in layers.items():
            for variable in layer.weights:
                key = f"after|graph|{name}/{variable.name.split('/')[-1].removesuffix(':0')}"
                arrays[key] = session.run(variable)
    arrays.update(slim_ema(tf))
    return arrays


def slim_ema(tf) -> dict[str, np.ndarray]:
    from conformance.tf_slim_compat import import_tf_slim

    slim = import_tf_slim(tf)
    v1 = tf.compat.v1
    arrays: dict[str, np.ndarray] = {}
    scratch = tempfile.mkdtemp()
    graph = tf.Graph()
    with graph.as_default():
        xs = {s: v1.placeholder(tf.float32, shape) for s, (shape, _) in SLIM_EMA_LAYERS.items()}
        train = {s: slim.batch_norm(xs[s], is_training=True, scope=s, **o) for s, (_, o) in SLIM_EMA_LAYERS.items()}
        infer = {
            s: slim.batch_norm(xs[s], is_training=False, scope=s, reuse=True, **o)
            for s, (_, o) in SLIM_EMA_LAYERS.items()
        }
        loss = tf.add_n([tf.reduce_sum(y * _weights(s, y.shape.as_list())) for s, y in train.items()])
        ema = v1.train.ExponentialMovingAverage(EMA_DECAY)
        tracked = [v for v in v1.global_variables() if v.op.name.startswith(EMA_SCOPES)]
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            step = v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        with tf.control_dependencies([step]):
            train_op = ema.apply(tracked)
        raw_saver = v1.train.Saver(v1.global_variables())
        ema_saver = v1.train.Saver(ema.variables_to_restore(tracked))
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for step_index in range(STEPS):
                session.run(train_op, {x: _data(s, x.shape.as_list(), step_index) for s, x in xs.items()})
            prefix = raw_saver.save(session, os.path.join(scratch, "slim_ema.ckpt"))
            feed = {x: _data(s, x.shape.as_list(), 99) for s, x in xs.items()}
            arrays.update({f"input|{s}": feed[x] for s, x in xs.items()})
            arrays.update({f"infer|{s}": y for s, y in session.run(infer, feed).items()})
            ema_saver.restore(session, prefix)  # the shadows into the model's variables
            arrays.update({f"infer_ema|{s}": y for s, y in session.run(infer, feed).items()})
        arrays.update(_read_checkpoint(tf, prefix))
    return arrays


def manifest(out: str) -> dict:
    import hashlib
    import platform
    from importlib import metadata

    import tensorflow as tf

    files = sorted(f for f in os.listdir(out) if f != "manifest.json")
    return {
        "generator": "python -m conformance.keras_models (nox -s checkpoints)",
        "mobilenet_v2": {"arguments": MOBILENET, "steps": STEPS, "batch": BATCH},
        "mode_layers": {k: {"shape": s, "options": o} for k, (s, o) in MODE_LAYERS.items()},
        "modes": list(MODES),
        "slim_ema_layers": {k: {"shape": s, "options": o} for k, (s, o) in SLIM_EMA_LAYERS.items()},
        "ema_scopes": list(EMA_SCOPES),
        "ema_decay": EMA_DECAY,
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "tf_keras": metadata.version("tf-keras"),
            "numpy": np.__version__,
        },
        "settings": {"TF_ENABLE_ONEDNN_OPTS": os.environ["TF_ENABLE_ONEDNN_OPTS"]},
        "sha256": {
            f: hashlib.sha256(open(os.path.join(out, f), "rb").read()).hexdigest() for f in files
        },
    }


#: The MobileNet's files. Its three training steps round differently on another processor,
#: and the trained weights with them (by percents after three steps); there the committed
#: model is checked layer by layer instead (``_check_mobilenet_layers``).
MOBILENET_FILES = ("mobilenet_v2.h5", "mobilenet_v2.keras", "mobilenet_v2.npz")


def check(out: str) -> None:
    differing = check_regenerated(out, lambda fresh: main(["--out", fresh]))
    if differing and set(differing) <= set(MOBILENET_FILES):
        print("the MobileNet trained differently on this processor: its committed layers, one by one")
        _check_mobilenet_layers(out)
        return
    require_no_differences(out, differing)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    parser.add_argument("--graph-part", help=argparse.SUPPRESS)  # the TF1 half, in its own process
    arguments = parser.parse_args(argv)
    if arguments.check:
        check(arguments.out)
        return
    if arguments.graph_part:
        tf = _import_tf()
        tf.compat.v1.disable_eager_execution()
        np.savez(arguments.graph_part, **graph_mode(tf))
        return
    os.makedirs(arguments.out, exist_ok=True)
    tf = _import_tf()
    mobilenet(tf, arguments.out)
    mode_arrays = modes(tf, [m for m in MODES if m != "graph"])
    with tempfile.TemporaryDirectory() as scratch:
        part = os.path.join(scratch, "graph.npz")
        subprocess.run([sys.executable, "-m", "conformance.keras_models", "--graph-part", part], check=True)
        with np.load(part) as file:
            graph_arrays = {k: file[k] for k in file.files}
    mode_arrays.update({k: v for k, v in graph_arrays.items() if k.startswith("after|graph|")})
    np.savez_compressed(os.path.join(arguments.out, "keras_modes.npz"), **mode_arrays)
    ema = {k: v for k, v in graph_arrays.items() if not k.startswith("after|graph|")}
    np.savez_compressed(os.path.join(arguments.out, "slim_ema.npz"), **ema)
    with open(os.path.join(arguments.out, "manifest.json"), "w") as file:
        json.dump(manifest(arguments.out), file, indent=1, sort_keys=True)
        file.write("\n")
    print(f"wrote {', '.join(sorted(os.listdir(arguments.out)))} to {arguments.out}")


if __name__ == "__main__":
    main()

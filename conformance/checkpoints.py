"""TensorFlow-written checkpoints and Keras weight files for the porting tests.

Run from the repository root in the golden environment (``nox -s checkpoints``)::

    python -m conformance.checkpoints [--out DIR] [--check]

It trains, for three steps of gradient descent on a fixed linear loss:

- three tf-slim ``batch_norm`` layers in one TF1 graph (scopes ``slim_legacy``:
  zero-debiased, the legacy composite; ``slim_fused``: the fused kernel on NCHW;
  ``slim_renorm``: batch renormalization), saved with ``tf.compat.v1.train.Saver``;
- one Keras model with five ``tf_keras.layers.BatchNormalization`` layers
  (``bn_conv``: rank 4, axis -1, fused kernel; ``bn_nchw``: rank 4, axis 1;
  ``bn_renorm``: renorm; ``bn_dense``: rank 2, no beta; ``bn_inner``: inside a
  nested ``Sequential``), saved as a full-model
  ``.h5``, a ``.keras`` archive, a weights-only ``.h5`` and a TF2 object
  checkpoint.

The checkpoints are read back with ``tf.train.load_checkpoint`` into plain dicts
(``slim.npz`` and ``keras.npz``, keys ``checkpoint|<variable name>``). For a
fixed test input each file also holds TensorFlow's outputs: ``infer|<layer>``
(inference), ``train|<layer>`` (one more training step) and
``after|<layer>/<variable>`` (the variables after that step). ``manifest.json``
records versions and the files' sha256. ``--check`` regenerates into a
temporary folder and compares every stored array (a ``.keras`` archive's bytes
hold its save time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from conformance.compare import difference_lines, stored_differences
from conformance.tf_slim_compat import import_tf_slim

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "porting"
)
STEPS = 3
LEARNING_RATE = 0.1

#: tf-slim layers: scope -> (input shape, batch_norm keyword arguments).
SLIM_LAYERS = {
    "slim_legacy": (
        (6, 4, 4, 3),
        # tf-slim's fused=None means fused=True: ask for the composite explicitly.
        {"decay": 0.9, "epsilon": 1e-3, "scale": True, "zero_debias_moving_mean": True,
         "fused": False},
    ),
    "slim_fused": (
        (6, 3, 4, 4),
        {"decay": 0.8, "epsilon": 1e-3, "scale": True, "fused": True, "data_format": "NCHW"},
    ),
    "slim_renorm": (
        (6, 4, 4, 3),
        {
            "decay": 0.9,
            "epsilon": 1e-3,
            "scale": True,
            "fused": False,
            "renorm": True,
            "renorm_decay": 0.8,
            "renorm_clipping": {"rmin": 0.5, "rmax": 2.0, "dmax": 1.0},
        },
    ),
}

#: Keras layers: name -> (input shape, BatchNormalization keyword arguments).
KERAS_LAYERS = {
    "bn_conv": ((6, 4, 4, 3), {"momentum": 0.9, "epsilon": 1e-3}),
    "bn_nchw": ((6, 3, 4, 4), {"axis": 1, "momentum": 0.8}),
    "bn_renorm": (
        (6, 4, 4, 3),
        {"momentum": 0.9, "renorm": True, "renorm_momentum": 0.8,
         "renorm_clipping": {"rmin": 0.5, "rmax": 2.0, "dmax": 1.0}},
    ),
    "bn_dense": ((8, 5), {"momentum": 0.95, "epsilon": 1e-2, "center": False}),
    "bn_inner": ((6, 4, 4, 3), {"momentum": 0.7}),
}

#: Keras layers inside a nested model: layer name -> the nested Sequential's name.
KERAS_NESTED = {"bn_inner": "inner"}

#: Filled by keras_files: each Keras layer's scope in the TF2 object checkpoint.
KERAS_CHECKPOINT_SCOPES: dict[str, str] = {}


def _rng(name: str, salt: int) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{name}|{salt}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def _data(name: str, shape: tuple[int, ...], salt: int) -> np.ndarray:
    """Per-channel offsets and spreads, so that statistics differ by channel."""
    rng = _rng(name, salt)
    return (1.5 + 2.0 * rng.standard_normal(shape)).astype(np.float32)


def _weights(name: str, shape: tuple[int, ...]) -> np.ndarray:
    return _rng(name, 1000).standard_normal(shape).astype(np.float32)


def _import_tf():
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    tf_slim = import_tf_slim(tf)
    return tf, tf_slim


def _read_checkpoint(tf, prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {
        f"checkpoint|{name}": reader.get_tensor(name)
        for name in sorted(reader.get_variable_to_shape_map())
        if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
    }


def slim_files(tf, slim, out: str, scratch: str) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        placeholders, outputs, inference = {}, {}, {}
        for scope, (shape, options) in SLIM_LAYERS.items():
            x = v1.placeholder(tf.float32, shape, name=f"{scope}_x")
            placeholders[scope] = x
            outputs[scope] = slim.batch_norm(x, is_training=True, scope=scope, **options)
            inference[scope] = slim.batch_norm(x, is_training=False, scope=scope, reuse=True, **options)
        loss = tf.add_n(
            [tf.reduce_sum(y * _weights(scope, y.shape.as_list())) for scope, y in outputs.items()]
        )
        updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(updates):
            train = v1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(loss)
        variables = {v.op.name: v for v in v1.global_variables()}
        saver = v1.train.Saver()
        config = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        with v1.Session(graph=graph, config=config) as session:
            session.run(v1.global_variables_initializer())
            for step in range(STEPS):
                session.run(train, {x: _data(s, x.shape.as_list(), step) for s, x in placeholders.items()})
            prefix = saver.save(session, os.path.join(scratch, "slim.ckpt"))
            arrays.update(_read_checkpoint(tf, prefix))
            feed = {x: _data(s, x.shape.as_list(), 99) for s, x in placeholders.items()}
            for scope, x in placeholders.items():
                arrays[f"input|{scope}"] = feed[x]
            arrays.update(
                {f"infer|{s}": y for s, y in session.run(inference, feed).items()}
            )
            # One more training step: the layer's outputs and its update ops only.
            trained = session.run([outputs, updates], feed)[0]
            arrays.update({f"train|{s}": y for s, y in trained.items()})
            arrays.update({f"after|{name}": v for name, v in session.run(variables).items()})
    np.savez(os.path.join(out, "slim.npz"), **arrays)
    return arrays


def _batch_norms(model, scope):
    """``(name, layer, object-checkpoint scope)`` of each batch norm, nested ones included.

    A TF2 object checkpoint names layers by their position among those with weights.
    """
    for i, layer in enumerate(layer for layer in model.layers if layer.weights):
        here = f"{scope}/layer_with_weights-{i}"
        if hasattr(layer, "layers"):
            yield from _batch_norms(layer, here)
        else:
            yield layer.name, layer, here


def keras_files(tf, out: str, scratch: str) -> dict[str, np.ndarray]:
    import tf_keras

    inputs, outputs = [], []
    for name, (shape, options) in KERAS_LAYERS.items():
        x = tf_keras.Input(shape[1:], batch_size=shape[0], name=f"{name}_x")
        inputs.append(x)
        layer = tf_keras.layers.BatchNormalization(name=name, **options)
        if name in KERAS_NESTED:
            layer = tf_keras.Sequential([layer], name=KERAS_NESTED[name])
        outputs.append(layer(x))
    model = tf_keras.Model(inputs, outputs)
    KERAS_CHECKPOINT_SCOPES.update({name: scope for name, _, scope in _batch_norms(model, "model")})
    optimizer = tf_keras.optimizers.SGD(LEARNING_RATE)
    weights = [_weights(name, shape) for name, (shape, _) in KERAS_LAYERS.items()]

    def data(salt):
        return [_data(name, shape, salt) for name, (shape, _) in KERAS_LAYERS.items()]

    for step in range(STEPS):
        with tf.GradientTape() as tape:
            ys = model(data(step), training=True)
            loss = tf.add_n([tf.reduce_sum(y * w) for y, w in zip(ys, weights)])
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    model.save(os.path.join(out, "keras_model.h5"))
    model.save(os.path.join(out, "keras_model.keras"))
    model.save_weights(os.path.join(out, "keras_weights.h5"))
    prefix = tf.train.Checkpoint(model=model).write(os.path.join(scratch, "keras_ckpt"))
    arrays = _read_checkpoint(tf, prefix)
    test = data(99)
    for name, x in zip(KERAS_LAYERS, test):
        arrays[f"input|{name}"] = x
    for name, y in zip(KERAS_LAYERS, model(test, training=False)):
        arrays[f"infer|{name}"] = y.numpy()
    for name, y in zip(KERAS_LAYERS, model(test, training=True)):
        arrays[f"train|{name}"] = y.numpy()
    for name, layer, _ in _batch_norms(model, "model"):
        for variable in layer.weights:
            arrays[f"after|{name}/{variable.name.split('/')[-1].removesuffix(':0')}"] = (
                variable.numpy()
            )
    np.savez(os.path.join(out, "keras.npz"), **arrays)
    return arrays


def manifest(out: str) -> dict:
    from importlib import metadata

    import h5py
    import tensorflow as tf

    files = sorted(f for f in os.listdir(out) if f != "manifest.json")
    return {
        "generator": "python -m conformance.checkpoints (nox -s checkpoints)",
        "steps": STEPS,
        "learning_rate": LEARNING_RATE,
        "slim_layers": {k: {"shape": s, "options": o} for k, (s, o) in SLIM_LAYERS.items()},
        "keras_layers": {
            k: {"shape": s, "options": o, "checkpoint_scope": KERAS_CHECKPOINT_SCOPES[k],
                "nested_in": KERAS_NESTED.get(k)}
            for k, (s, o) in KERAS_LAYERS.items()
        },
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "tf_keras": metadata.version("tf-keras"),
            "tf_slim": metadata.version("tf-slim"),
            "numpy": np.__version__,
            "h5py": h5py.__version__,
        },
        "settings": {"TF_ENABLE_ONEDNN_OPTS": os.environ["TF_ENABLE_ONEDNN_OPTS"]},
        "sha256": {
            f: hashlib.sha256(open(os.path.join(out, f), "rb").read()).hexdigest() for f in files
        },
    }


def _stored_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz, .h5 or .keras file, by name (what ``--check`` compares)."""
    import io
    import zipfile

    import h5py

    if path.endswith(".npz"):
        with np.load(path) as file:
            return {key: file[key] for key in file.files}
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            data = io.BytesIO(archive.read("model.weights.h5"))
    else:
        data = path
    arrays = {}
    with h5py.File(data, "r") as file:
        file.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def check(out: str) -> None:
    """Regenerate into a temporary folder; fail unless every stored array is identical
    (or within processor rounding)."""
    require_no_differences(out, check_regenerated(out, lambda fresh: main(["--out", fresh])))


def check_regenerated(out: str, regenerate) -> list[str]:
    """``regenerate(folder)`` into a temporary folder and compare every array that ``out``'s
    files store (``.npz``, ``.h5`` and ``.keras`` alike): each must be identical or within
    ``PROCESSOR_ULPS`` (a layer's outputs also measured against its ``input|…``, as the
    conformance suite measures y). Prints what differs; returns the files with an array
    beyond processor rounding."""
    differing = []
    with tempfile.TemporaryDirectory() as fresh:
        regenerate(fresh)
        for name in sorted(f for f in os.listdir(fresh) if f != "manifest.json"):
            old, new = _stored_arrays(os.path.join(out, name)), _stored_arrays(os.path.join(fresh, name))
            beyond, close = stored_differences(old, new, lambda key, old=old: (_layer_input(old, key), None))
            for line in difference_lines(name, beyond, close):
                print(line)
            if beyond:
                differing.append(name)
    return differing


def require_no_differences(out: str, differing: list[str]) -> None:
    if differing:
        sys.exit(f"regenerated files differ beyond processor rounding: {', '.join(differing)}")
    print(f"regenerated files match {out} array for array (or within processor rounding)")


def _layer_input(arrays: dict[str, np.ndarray], key: str) -> np.ndarray | None:
    """``input|X`` for a layer's output ``infer|X``, ``train|X`` or ``infer_ema|X``."""
    kind, _, name = key.partition("|")
    return arrays.get(f"input|{name}") if kind in ("infer", "train", "infer_ema") else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    arguments = parser.parse_args(argv)
    if arguments.check:
        check(arguments.out)
        return
    os.makedirs(arguments.out, exist_ok=True)
    tf, slim = _import_tf()
    scratch = tempfile.mkdtemp()
    try:
        slim_files(tf, slim, arguments.out, scratch)
        keras_files(tf, arguments.out, scratch)
    finally:
        shutil.rmtree(scratch)
    with open(os.path.join(arguments.out, "manifest.json"), "w") as file:
        json.dump(manifest(arguments.out), file, indent=1, sort_keys=True)
        file.write("\n")
    print(f"wrote {', '.join(sorted(os.listdir(arguments.out)))} to {arguments.out}")


if __name__ == "__main__":
    main()

"""Flax NNX's ``flax.nnx.BatchNorm`` against ``bn_portable.conventions.flax_batch_norm``.

Each case runs one module (CPU) through a train, train, inference sequence, its batch
statistics updated by the module: ranks 2 to 4 with ``axis=-1`` and ``axis=1``;
``use_fast_variance`` both ways; float32, float16 and bfloat16 x beside float32
statistics (y float32, as Flax promotes), ``dtype=float16``/``bfloat16`` (y half,
statistics computed in float32); masks with uneven rows and a channel whose mask is all
False (NaN statistics, as Flax gives); no scale or bias; other momentum and epsilon; a
mean far from the spread on an exact binary grid (every sum exact in float32), where
the fast variance ``E[x²] − E[x]²`` is off by up to a quarter and the golden records
Flax's wrong numbers; and ``axis_name`` across two simulated CPU devices
(``shard_map``, ``XLA_FLAGS=--xla_force_host_platform_device_count=2``) with uneven
masks, where Flax averages the devices' means with equal weight (``run`` replays
those with two thread replicas and a summing reducer, eagerly on every backend).
Arrays: ``init/{scale, bias, mean, var}``, ``step<k>/x``, ``step<k>/mask``; outputs
``step<k>/y`` and ``step<k>/state/{mean, var}``. Generated with
``python -m conformance.conventions.generate flax``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import zlib
from typing import Any

import numpy as np

OP = "conventions/flax"
GROUP = "convention:flax"
CHANNELS = 3
STEPS = ["train", "train", "infer"]
REPLICAS = 2
LAYOUTS = {
    "NC": ((16, CHANNELS), -1),
    "NTC": ((6, 5, CHANNELS), -1),
    "NCT": ((6, CHANNELS, 5), 1),
    "NHWC": ((4, 4, 4, CHANNELS), -1),
    "NCHW": ((4, CHANNELS, 5, 3), 1),
}
#: name -> (x's dtype, the module's dtype argument)
DTYPES = {
    "float32": ("float32", None),
    "float16": ("float16", None),
    "bfloat16": ("bfloat16", None),
    "dtype=float16": ("float16", "float16"),
    "dtype=bfloat16": ("bfloat16", "bfloat16"),
}


def _case(layout: str, dtype: str = "float32", variant: str = "plain", *, fast: bool = True,
          mask: str | None = None, bias: bool = True, scale: bool = True, momentum: float = 0.99,
          epsilon: float = 1e-5, data: str = "normal", replicas: bool = False) -> dict[str, Any]:
    shape, axis = LAYOUTS[layout]
    x_dtype, module_dtype = DTYPES[dtype]
    kwargs: dict[str, Any] = {"momentum": momentum, "epsilon": epsilon, "axis": axis,
                              "use_fast_variance": fast}
    if module_dtype:
        kwargs["dtype"] = module_dtype
    variance = "fast" if fast else "two-pass"
    return {
        "id": f"flax/train/{layout}/{dtype}/{variance}/{variant}", "op": OP, "group": GROUP,
        "dtype": x_dtype, "channel_axis": axis, "kwargs": kwargs, "steps": STEPS,
        "shape": list(shape), "mask": mask, "bias": bias, "scale": scale, "data": data,
        "replicas": replicas,
    }


def _cases() -> list[dict[str, Any]]:
    cases = []
    for layout in LAYOUTS:
        for dtype in DTYPES:
            for fast in (True, False):
                cases.append(_case(layout, dtype, fast=fast))
    for layout in ("NC", "NCT", "NHWC"):
        for fast in (True, False):
            cases.append(_case(layout, variant="mask", fast=fast, mask="rows"))
    cases.append(_case("NHWC", "float16", "mask", mask="rows"))
    for fast in (True, False):
        cases.append(_case("NCHW", variant="mask-channel-all-false", fast=fast, mask="channel"))
        cases.append(_case("NHWC", variant="no-scale-no-bias", fast=fast, bias=False, scale=False))
        cases.append(_case("NCT", variant="momentum=0.9,epsilon=1e-3", fast=fast, momentum=0.9,
                           epsilon=1e-3))
        cases.append(_case("NC", variant="large-mean-grid", fast=fast, data="grid-1024"))
        cases.append(_case("NHWC", variant="large-mean-grid", fast=fast, data="grid-512"))
        for layout, mask in (("NC", None), ("NHWC", "rows")):
            variant = "axis_name" + ("-uneven-mask" if mask else "")
            cases.append(_case(layout, variant=variant, fast=fast, mask=mask, replicas=True))
    return cases


CASES = _cases()


def versions() -> dict[str, str]:
    import flax
    import jax

    return {"flax": flax.__version__, "jax": jax.__version__, "numpy": np.__version__}


def _data(case: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(case["id"].encode()))
    shape = tuple(case["shape"])
    data = {
        "init/scale": rng.uniform(0.5, 1.5, CHANNELS),
        "init/bias": rng.uniform(-0.5, 0.5, CHANNELS),
        "init/mean": rng.uniform(-0.2, 0.2, CHANNELS),
        "init/var": rng.uniform(0.5, 2.0, CHANNELS),
    }
    channel_shape = [1] * len(shape)
    channel_shape[case["channel_axis"]] = CHANNELS
    for k, _ in enumerate(case["steps"]):
        if case["data"].startswith("grid"):
            # loc + {0, 1} (or {0..3}): x, x² and every partial sum of either are exact
            # in float32 whatever the order, so Flax's E[x²] − E[x]² is order-independent.
            loc = float(case["data"].split("-")[1])
            top = 2 if loc >= 1024 else 4
            data[f"step{k}/x"] = loc + rng.integers(0, top, shape).astype(np.float64)
        else:
            offsets = np.linspace(-1.0, 1.0, CHANNELS).reshape(channel_shape)
            data[f"step{k}/x"] = rng.standard_normal(shape) * 2.0 + 0.5 + offsets
        if case["mask"] == "rows":
            mask_shape = [1] * len(shape)
            mask_shape[0] = shape[0]
            if len(shape) > 2:
                mask_shape[1 if case["channel_axis"] != 1 else 2] = shape[1 if case["channel_axis"] != 1 else 2]
            mask = rng.uniform(size=mask_shape) < 0.6
            mask[0, ...] = False
            mask[-1, ...] = True
            if case["replicas"]:  # uneven: the first device keeps one row, the second all
                mask[: shape[0] // 2] = False
                mask[1, ...] = True
            data[f"step{k}/mask"] = mask
        elif case["mask"] == "channel":
            mask = rng.uniform(size=shape) < 0.6
            index = [slice(None)] * len(shape)
            index[case["channel_axis"]] = 1
            mask[tuple(index)] = False
            data[f"step{k}/mask"] = mask
    return data


def _setup_jax() -> None:
    if "jax" not in sys.modules:  # two CPU devices for axis_name; read when JAX starts
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={REPLICAS}"
        )


def generate(case: dict[str, Any]) -> dict[str, np.ndarray]:
    _setup_jax()
    import jax
    import jax.numpy as jnp
    from flax import nnx

    data = _data(case)
    kwargs = case["kwargs"]
    x_dtype = case["dtype"]
    module = nnx.BatchNorm(
        CHANNELS, axis=kwargs["axis"], momentum=kwargs["momentum"], epsilon=kwargs["epsilon"],
        dtype=kwargs.get("dtype"), use_bias=case["bias"], use_scale=case["scale"],
        use_fast_variance=kwargs["use_fast_variance"],
        axis_name="replicas" if case["replicas"] else None, rngs=nnx.Rngs(0),
    )
    out: dict[str, np.ndarray] = {}
    for name in ("scale", "bias", "mean", "var"):
        variable = getattr(module, name, None)
        if variable is None:
            continue
        value = jnp.asarray(data[f"init/{name}"], jnp.float32)
        variable[...] = value
        out[f"init/{name}"] = np.asarray(value)
    for k, step in enumerate(case["steps"]):
        x = jnp.asarray(data[f"step{k}/x"], x_dtype)
        mask = data.get(f"step{k}/mask")
        mask_j = None if mask is None else jnp.asarray(mask)
        use_running_average = step != "train"
        if case["replicas"]:
            y = _sharded_call(module, x, mask_j, use_running_average, jax, nnx)
        else:
            y = module(x, use_running_average=use_running_average, mask=mask_j)
        out[f"step{k}/x"] = np.asarray(x)
        if mask is not None:
            out[f"step{k}/mask"] = mask
        out[f"step{k}/y"] = np.asarray(y)
        out[f"step{k}/state/mean"] = np.asarray(module.mean[...])
        out[f"step{k}/state/var"] = np.asarray(module.var[...])
    return out


def _sharded_call(module: Any, x: Any, mask: Any, use_running_average: bool, jax: Any, nnx: Any) -> Any:
    """The module under ``shard_map`` over two CPU devices, the batch split evenly."""
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((REPLICAS,), ("replicas",))
    graphdef, state = nnx.split(module)

    def step(state: Any, x: Any, mask: Any) -> Any:
        replica = nnx.merge(graphdef, state)
        y = replica(x, use_running_average=use_running_average, mask=mask)
        return y, nnx.state(replica)

    spec = PartitionSpec("replicas")
    mask_spec = None if mask is None else spec
    sharded = jax.shard_map(step, mesh=mesh, in_specs=(PartitionSpec(), spec, mask_spec),
                            out_specs=(spec, PartitionSpec()), check_vma=False)
    put = lambda a, p: None if a is None else jax.device_put(a, NamedSharding(mesh, p))  # noqa: E731
    state = jax.tree.map(lambda a: put(a, PartitionSpec()), state)
    y, new_state = sharded(state, put(x, spec), put(mask, spec))
    nnx.update(module, new_state)
    return y


def run(case: dict[str, Any], inputs: Any, backend: Any) -> dict[str, np.ndarray]:
    from bn_portable.conventions import flax_batch_norm

    kwargs = case["kwargs"]
    static = json.dumps([OP, kwargs], sort_keys=True)
    scale, bias = inputs.optional("init/scale"), inputs.optional("init/bias")
    mean, var = inputs("init/mean"), inputs("init/var")
    produced: dict[str, Any] = {}
    for k, step in enumerate(case["steps"]):
        x, mask = inputs(f"step{k}/x"), inputs.optional(f"step{k}/mask")
        if case["replicas"]:
            y, mean, var = _replicated(flax_batch_norm, backend, x, mean, var, scale, bias,
                                       step != "train", mask, kwargs)
        else:
            y, mean, var = backend.call(
                lambda x, m, v, s, b, mask, running=step != "train": flax_batch_norm(
                    x, m, v, s, b, running, mask=mask, **kwargs
                ),
                x, mean, var, scale, bias, mask, static=static,
            )
        produced[f"step{k}/y"] = y
        produced[f"step{k}/state/mean"] = mean
        produced[f"step{k}/state/var"] = var
    return {name: backend.to_numpy(value) for name, value in produced.items()}


def _replicated(function: Any, backend: Any, x: Any, mean: Any, var: Any, scale: Any, bias: Any,
                running: bool, mask: Any, kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Two thread replicas, each on its half of the batch, summing through a barrier (eagerly:
    they exchange concrete arrays); y concatenated, the statistics replica 0's."""
    xp = backend.xp
    half = x.shape[0] // REPLICAS
    barrier, slots = threading.Barrier(REPLICAS, timeout=60), [None] * REPLICAS
    results: list[Any] = [None] * REPLICAS
    errors: list[BaseException] = []

    def reducer(rank: int) -> Any:
        def cross_replica_sum(array: Any) -> Any:
            slots[rank] = array
            barrier.wait()
            total = slots[0] + slots[1]  # the same order on every replica: the same bits
            barrier.wait()
            return total
        return cross_replica_sum

    def replica(rank: int) -> None:
        part = slice(rank * half, (rank + 1) * half)
        try:
            results[rank] = function(
                x[part, ...], mean, var, scale, bias, running,
                mask=None if mask is None else mask[part, ...], cross_replica_sum=reducer(rank),
                **kwargs,
            )
        except BaseException as error:  # reported in the caller's thread
            errors.append(error)
            barrier.abort()

    with backend.context():
        threads = [threading.Thread(target=replica, args=(r,)) for r in range(REPLICAS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    if errors:
        raise errors[0]
    y = xp.concat([result[0] for result in results], axis=0)
    return y, results[0][1], results[0][2]

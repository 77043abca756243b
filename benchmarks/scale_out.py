"""Scale-out numbers for docs/scale-out.md: Dask throughput and the cost of synchronization.

1. Dask: ``batch_norm`` (training step, y and the new state) and ``recalibrate``
   on a chunked array on a ``dask.distributed.LocalCluster`` with 1 and with 2
   worker processes (one thread each); samples per second, best of the repeats.
2. Synchronization: one training step with its backward (``batch_norm_vjp`` and
   ``vjp(dy)``) per call, on PyTorch with one thread per process, for a global
   batch of 256×512 (NC, the Keras layer) and 32×64×56×56 (NCHW, the fused
   kernel): one process with the whole batch; two gloo processes with half of
   it each, synchronized with ``torch_cross_replica_sum``; and the same two
   processes unsynchronized (each its own statistics). The difference between
   the last two is the synchronization's cost per call; one process with the
   identity as reducer shows how much of it is the synchronized code path
   itself (the native fast paths are bypassed there) rather than communication.

Every number is measured in one run of this script, side by side; the load
average of the machine is recorded with them, since it is shared.

    python benchmarks/scale_out.py [--quick] [--out benchmarks/results/scale_out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import bn_portable as bn  # noqa: E402

SYNC_SHAPES = {"256x512": ((256, 512), {}), "32x64x56x56": ((32, 64, 56, 56), {"fused": True, "data_format": "NCHW"})}


# --- Dask ---------------------------------------------------------------------


def dask_throughput(workers: int, shape, chunk: int, repeats: int) -> dict[str, float]:
    import dask
    import dask.array as da
    import distributed

    with (
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster),
    ):
        x = da.random.default_rng(0).standard_normal(shape, chunks=(chunk, *shape[1:]), dtype=np.float32)
        x = x.persist()  # the data lives on the workers; only the computation is timed
        distributed.wait(x)
        results = {}
        for label, make in (
            ("batch_norm", lambda: _layer_graph(bn, x)),
            ("recalibrate", lambda: bn.recalibrate(x, None, fused=True)),
        ):
            times = []
            for _ in range(repeats):
                graph = make()
                started = time.perf_counter()
                dask.compute(graph)
                times.append(time.perf_counter() - started)
            results[label] = shape[0] / min(times)
        return results


def _layer_graph(bn, x):
    y, state = bn.batch_norm(x, None, fused=True)
    return y.sum(axis=0), state  # y is computed in full, only its column sums travel


# --- synchronization ---------------------------------------------------------


def _sync_worker(rank: int, world: int, port: int, out: str, calls: dict[str, int]) -> None:
    import torch
    import torch.distributed as dist

    from bn_portable.distributed import torch_cross_replica_sum

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=600),
    )
    reducer = torch_cross_replica_sum()
    results = {}
    for label, (shape, options) in SYNC_SHAPES.items():
        generator = torch.Generator().manual_seed(rank)
        local = (shape[0] // world, *shape[1:])
        x = torch.randn(local, generator=generator)
        dy = torch.randn(local, generator=generator)
        for mode, sync in (("synchronized", reducer), ("unsynchronized", None)):
            results[f"{label}/{mode}"] = _time_calls(x, dy, options, sync, calls[label], dist.barrier)
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def _time_calls(x, dy, options, reducer, calls, barrier=None):
    times = []
    for index in range(calls + 1):
        if barrier is not None:
            barrier()
        started = time.perf_counter()
        _, _, vjp = bn.batch_norm_vjp(x, None, cross_replica_sum=reducer, **options)
        vjp(dy)
        if index:  # the first call warms up
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def synchronization_cost(calls: dict[str, int]) -> dict[str, dict[str, float]]:
    import torch
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    single = {}
    for label, (shape, options) in SYNC_SHAPES.items():
        generator = torch.Generator().manual_seed(0)
        x, dy = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        single[label] = (
            _time_calls(x, dy, options, None, calls[label]),
            # The synchronized code path with nothing to talk to: what bypassing
            # the native fast paths costs, apart from the communication.
            _time_calls(x, dy, options, lambda a: a, calls[label]),
        )
    with tempfile.TemporaryDirectory() as out:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mp.start_processes(_sync_worker, args=(2, port, out, calls), nprocs=2, start_method="spawn")
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]
    table = {}
    for label in SYNC_SHAPES:
        synced = max(r[f"{label}/synchronized"] for r in ranks)
        unsynced = max(r[f"{label}/unsynchronized"] for r in ranks)
        table[label] = {
            "one_process_s": single[label][0],
            "one_process_identity_reducer_s": single[label][1],
            "two_processes_synchronized_s": synced,
            "two_processes_unsynchronized_s": unsynced,
            "synchronization_s": synced - unsynced,
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller Dask array")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale_out.json")
    args = parser.parse_args()
    repeats = 2 if args.quick else 3
    dask_shape = (8192, 8, 8, 32) if args.quick else (16384, 8, 8, 32)
    calls = {"256x512": 10 if args.quick else 40, "32x64x56x56": 3 if args.quick else 8}
    load_before = os.getloadavg()
    dask_results = {f"{w} worker{'s' * (w > 1)}": dask_throughput(w, dask_shape, 1024, repeats) for w in (1, 2)}
    sync = synchronization_cost(calls)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "load_average_before_after": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        "command": "python benchmarks/scale_out.py" + (" --quick" if args.quick else ""),
        "dask": {"shape": list(dask_shape), "chunk_rows": 1024, "samples_per_s": dask_results},
        "synchronization_per_call": sync,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ingestion throughput on a Dask cluster against the local process pool, side by side in one run.

For each dataset (the demo set in data/01_raw/demo, made by `kedro run --pipelines demo_data`, and
the real clips of ../shared/data), times `ingest_all` (conf/base's ingestion, a fresh shard folder
each time, so nothing is skipped) with:
- `pool xN`: `executor: processes`, N local worker processes;
- `dask xN`: `executor: dask` on a LocalCluster of N single-threaded worker processes (Nannies, as
  `dask worker` starts them), started once per N before the timings and warmed up (the project
  imported on each worker), as a long-running cluster would be; its start is reported apart.
N = 1 and 2. With `--s3` (default on), each mode also runs from and to object storage: a moto S3
server on localhost (in this process) holds the videos, and the shards are uploaded to it
(`... s3` rows; the per-video download and upload of the object-storage path against local disk).
Each mode runs `--repeats` times, interleaved, and the median is kept. Prints a table (videos/s
over every file of the folder, source MB/s), the Dask / pool time ratio at equal workers (target
<= 1.15) and the S3 / disk ratio, writes JSON.

    python benchmarks/bench_ingestion_dask.py [--repeats 3] [--workers 1,2] [--no-s3]
        [--out benchmarks/results/bench_ingestion_dask.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dask
import distributed
from distributed import Client, LocalCluster
from moto.server import ThreadedMotoServer

from pemt_pipeline.atomic import write_text
from pemt_pipeline import storage
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all

ROOT = Path(__file__).resolve().parents[1]


def start_cluster(workers: int, stack: contextlib.ExitStack) -> tuple[str, float]:
    start = time.perf_counter()
    cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                               dashboard_address=None))
    with Client(cluster, set_as_default=False) as client:
        client.run(importlib.import_module, "pemt_pipeline.media.ingest")  # as a running cluster has it
    return cluster.scheduler_address, time.perf_counter() - start


BUCKET = "bench-ingestion"


def start_s3(stack: contextlib.ExitStack, cache: str) -> dict:
    """A moto S3 server on a free localhost port with one bucket; this process's storage options
    (and those of the clusters started after) point at it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stack.callback(server.stop)
    options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    storage.configure({"s3": options}, cache_dir=cache, cache_max_gb=5.0)
    stack.callback(storage.configure, None)
    fs, _ = storage.filesystem(f"s3://{BUCKET}")
    fs.mkdir(BUCKET)
    return options


def upload(folder: Path, name: str):
    """The folder's files copied into the bucket under `name`; the index of that copy."""
    fs, _ = storage.filesystem(f"s3://{BUCKET}")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{BUCKET}/{name}/{path.relative_to(folder).as_posix()}")
    return build_index(VideoSource(f"s3://{BUCKET}/{name}"))


def timed(index, workers: int, scheduler: str | None, remote: bool) -> tuple[float, dict]:
    params = {"workers": workers, "progress": False}
    if scheduler is not None:
        params |= {"executor": "dask", "dask_scheduler": scheduler}
    with tempfile.TemporaryDirectory() as shards:
        shard_dir = f"s3://{BUCKET}/shards-{uuid.uuid4().hex[:8]}" if remote else shards
        cfg = IngestConfig.from_dict({**params, "shard_dir": shard_dir})
        start = time.perf_counter()
        _, _, counts = ingest_all(index, cfg)
        return time.perf_counter() - start, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="worker counts, compared at equal counts")
    parser.add_argument("--demo", type=Path, default=ROOT / "data" / "01_raw" / "demo")
    parser.add_argument("--real-clips", type=Path, default=ROOT.parent / "shared" / "data" / "real_clips")
    parser.add_argument("--s3", action=argparse.BooleanOptionalAction, default=True,
                        help="also from and to a local S3 server (moto)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_ingestion_dask.json")
    args = parser.parse_args()
    for name, folder in (("demo", args.demo), ("real clips", args.real_clips)):
        if not folder.is_dir():
            sys.exit(f"{folder} ({name}) is missing" + (": make it with `kedro run --pipelines demo_data`"
                                                        if name == "demo" else ""))
    counts = [int(n) for n in args.workers.split(",")]
    datasets = {}
    for name, folder in (("demo", args.demo), ("real_clips", args.real_clips)):
        index = build_index(VideoSource(folder))
        size = sum(os.path.getsize(p) for p in index["path"] if isinstance(p, str) and os.path.isfile(p))
        datasets[name] = {"folder": folder, "index": index, "files": len(index), "mb": size / 2**20}

    results = {}
    with contextlib.ExitStack() as stack:
        if args.s3:  # before the clusters: their workers inherit the storage options
            start_s3(stack, stack.enter_context(tempfile.TemporaryDirectory()))
            for name, d in datasets.items():
                d["remote_index"] = upload(d["folder"], name)
        clusters = {n: start_cluster(n, stack) for n in counts}
        modes = [(f"{kind} x{n}{' s3' if remote else ''}", n, clusters[n][0] if kind == "dask" else None, remote)
                 for remote in ((False, True) if args.s3 else (False,)) for n in counts for kind in ("pool", "dask")]
        for name, d in datasets.items():
            timed(d["index"], 1, None, False)  # warm-up (page cache, first decodes)
            samples = {mode: [] for mode, *_ in modes}
            outcome = {}
            for _ in range(args.repeats):
                for mode, n, scheduler, remote in modes:
                    seconds, outcome[mode] = timed(d["remote_index"] if remote else d["index"], n, scheduler, remote)
                    samples[mode].append(seconds)
            assert len({json.dumps(c, sort_keys=True) for c in outcome.values()}) == 1, outcome
            rows = {}
            for mode, s in samples.items():
                t = statistics.median(s)
                rows[mode] = {"seconds": t, "samples": s, "videos_per_s": d["files"] / t, "mb_per_s": d["mb"] / t}
            ratios = {f"x{n}": rows[f"dask x{n}"]["seconds"] / rows[f"pool x{n}"]["seconds"] for n in counts}
            s3_ratios = {f"{kind} x{n}": rows[f"{kind} x{n} s3"]["seconds"] / rows[f"{kind} x{n}"]["seconds"]
                         for n in counts for kind in ("pool", "dask")} if args.s3 else {}
            results[name] = {"files": d["files"], "source_mb": d["mb"], "counts": outcome[modes[0][0]],
                             "modes": rows, "dask_over_pool": ratios, "s3_over_disk": s3_ratios}

    header = f"{'dataset':<11} {'mode':<11} {'seconds':>8} {'videos/s':>9} {'MB/s':>7}"
    print(header + "\n" + "-" * len(header))
    for name, r in results.items():
        for mode, row in r["modes"].items():
            print(f"{name:<11} {mode:<11} {row['seconds']:8.3f} {row['videos_per_s']:9.2f} {row['mb_per_s']:7.2f}")
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in r["dask_over_pool"].items())
        print(f"{name:<11} dask / pool time at equal workers: {ratios} (target <= 1.15); {r['files']} files, "
              f"{r['source_mb']:.1f} MB, {r['counts']}")
        if r["s3_over_disk"]:
            s3_ratios = ", ".join(f"{k} {v:.3f}" for k, v in r["s3_over_disk"].items())
            print(f"{name:<11} S3 / local disk time: {s3_ratios}")
    starts = ", ".join(f"x{n} {s:.1f} s" for n, (_, s) in clusters.items())
    print(f"LocalCluster start + warm-up (not in the times above): {starts}")
    report = {"benchmark": "ingestion_dask", "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "dask": dask.__version__, "distributed": distributed.__version__, "repeats": args.repeats,
              "cluster_start_s": {f"x{n}": s for n, (_, s) in clusters.items()}, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

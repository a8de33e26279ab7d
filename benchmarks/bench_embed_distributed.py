"""Embedding in one process against several (embedding.nproc_per_node, torch's elastic launcher, gloo
on the CPU), timed interleaved on the same shards, one torch thread per process.

    python benchmarks/bench_embed_distributed.py [--videos 32] [--procs 1,2] [--rounds 3]
                                                 [--out benchmarks/results/bench_embed_distributed.json]

The demo videos (`--videos` of them, media.synthetic defaults) are ingested once with the conf/base
ingestion parameters; each round then embeds them with the conf/base model and embedding
parameters once per process count, in turn. The time is `embed_clips` end to end, as the node sees
it: for several processes that includes starting the workers (spawn, imports, rendezvous) and rank
0 copying the parts into the store. Every store is checked bit-identical to the first one. "startup"
is, in the same rounds, a launch of workers that do nothing (the fixed cost of several processes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process (the workers inherit it)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pemt_pipeline.atomic import write_text  # noqa: E402
from pemt_pipeline.distributed import launch  # noqa: E402 (after the sys.path line)
from pemt_pipeline.features import EmbedConfig, embed_clips  # noqa: E402
from pemt_pipeline.media.folder import VideoSource, build_index  # noqa: E402
from pemt_pipeline.media.ingest import IngestConfig, ingest_all  # noqa: E402
from pemt_pipeline.media.synthetic import DemoConfig, generate_demo_dataset  # noqa: E402
from pemt_pipeline.models import ModelConfig  # noqa: E402
from pemt_pipeline.project_config import project_parameters  # noqa: E402


def ingest(root: Path, n_videos: int, params: dict):
    files, _ = generate_demo_dataset(DemoConfig(n_videos=n_videos))
    for rel, blob in files.items():
        (root / "demo" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "demo" / rel).write_bytes(blob)
    cfg = IngestConfig.from_dict({**params["ingestion"], "shard_dir": str(root / "shards"), "workers": 2,
                                  "progress": False})
    manifest, rejects, _ = ingest_all(build_index(VideoSource(root / "demo")), cfg)
    if not rejects.empty:
        raise RuntimeError(f"{len(rejects)} demo videos rejected")
    return manifest


def _nothing(inputs, ctx) -> dict:
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_embed_distributed.json"))
    args = parser.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    params = project_parameters(ROOT / "conf", env="base")
    model_cfg = ModelConfig.from_dict(params["model"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = ingest(root, args.videos, params)
        runs: dict[int, list[float]] = {p: [] for p in procs}
        startup: dict[int, list[float]] = {p: [] for p in procs if p > 1}
        reference = None
        for r in range(args.rounds):
            for p in procs:
                if p > 1:
                    start = time.perf_counter()
                    launch(_nothing, None, EmbedConfig(nproc_per_node=p))
                    startup[p].append(time.perf_counter() - start)
                cfg = EmbedConfig.from_dict({**params["embedding"], "output_dir": str(root / f"emb{p}"),
                                             "progress": False, "nproc_per_node": p})
                start = time.perf_counter()
                store = embed_clips(manifest, model_cfg, cfg)
                runs[p].append(time.perf_counter() - start)
                arrays = (np.array(store.visual), np.array(store.audio))
                if reference is None:
                    reference = arrays
                elif not all(np.array_equal(a, b) for a, b in zip(arrays, reference)):
                    raise RuntimeError(f"{p} processes gave other embeddings than {procs[0]}")
                print(f"round {r + 1}: {p} process(es) {runs[p][-1]:.2f} s"
                      + (f" (startup alone {startup[p][-1]:.2f} s)" if p > 1 else ""), flush=True)
        n_clips = len(store.clips)
    base = statistics.median(runs[procs[0]])
    medians = {p: statistics.median(runs[p]) for p in procs}
    rows = [{"processes": p, "seconds": [round(s, 3) for s in runs[p]], "median_s": round(medians[p], 3),
             "clips_per_s": round(n_clips / medians[p], 1), "speedup": round(base / medians[p], 2),
             "startup_median_s": round(statistics.median(startup[p]), 3) if p in startup else 0.0} for p in procs]
    print(f"\n{n_clips} clips, {args.videos} videos, crop {params['embedding']['crop']}, batch "
          f"{params['embedding']['batch_size']}, {os.environ['OMP_NUM_THREADS']} thread(s) per process, "
          f"{os.cpu_count()} cores\n")
    print("| processes | median s | clips/s | speedup vs first | startup alone (s) | runs (s) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['processes']} | {row['median_s']:.2f} | {row['clips_per_s']:.1f} | {row['speedup']:.2f}x | "
              f"{row['startup_median_s']:.2f} | {', '.join(f'{s:.2f}' for s in row['seconds'])} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps({"clips": n_clips, "videos": args.videos, "threads_per_process":
                               int(os.environ["OMP_NUM_THREADS"]), "cores": os.cpu_count(),
                               "machine": platform.platform(), "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()

"""Ingestion throughput against the bare decoder, side by side in one run.

For each dataset (the real clips of ../shared/data and the synthetic demo set), times:
- `decode`: PyAV alone decoding every frame of the same streams of the same files (the floor);
- `ingest x1`: the ingestion library with 1 worker (fresh shard folder, so nothing is skipped);
- `ingest x2`: the same with 2 worker processes.
Each is run `--repeats` times, interleaved, and the median is kept. Prints a table, writes JSON.
Targets (issue 2): ingest x1 <= 1.3 x decode time; ingest x2 >= 1.7 x ingest x1 throughput.

    python benchmarks/bench_ingestion.py [--repeats 3] [--out benchmarks/results/bench_ingestion.json]
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

import av

from pemt_pipeline.media.decode import choose_audio, choose_video, open_container, probe
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.synthetic import DemoConfig, generate_demo_dataset

ROOT = Path(__file__).resolve().parents[1]


def bare_decode(paths: list[str]) -> float:
    """Decode every video and audio frame of the streams ingestion would choose; returns seconds."""
    start = time.perf_counter()
    for path in paths:
        with open_container(path) as c:
            info = probe(c)
            streams = [c.streams[s.index] for s in (choose_video(info.video), choose_audio(info.audio)) if s]
            streams[0].codec_context.thread_count = 1
            for packet in c.demux(streams):
                for _ in packet.decode():
                    pass
    return time.perf_counter() - start


def timed_ingest(index, workers: int) -> tuple[float, dict, object]:
    with tempfile.TemporaryDirectory() as shards:
        cfg = IngestConfig(shard_dir=shards, workers=workers, progress=False)
        start = time.perf_counter()
        manifest, _, counts = ingest_all(index, cfg)
        return time.perf_counter() - start, counts, manifest


def demo_folder(tmp: Path) -> Path:
    files, labels = generate_demo_dataset(DemoConfig())
    for rel, blob in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(blob)
    labels.to_csv(tmp / "labels.csv", index=False)
    return tmp


def bench_dataset(name: str, folder: Path, repeats: int) -> dict:
    index = build_index(VideoSource(folder))
    _, counts, manifest = timed_ingest(index, 1)  # warm-up; tells which files are accepted
    accepted = index[index["video_id"].isin(manifest["video_id"])]
    paths = accepted["path"].tolist()
    times = {"decode": [], "ingest x1": [], "ingest x2": []}
    for _ in range(repeats):
        times["decode"].append(bare_decode(paths))
        times["ingest x1"].append(timed_ingest(accepted, 1)[0])
        times["ingest x2"].append(timed_ingest(accepted, 2)[0])
    video_s = float(manifest["duration_s"].sum())
    clips = int(manifest["n_clips"].sum())
    rows = {}
    for mode, samples in times.items():
        t = statistics.median(samples)
        rows[mode] = {"seconds": t, "samples": samples, "video_s_per_s": video_s / t,
                      "clips_per_s": clips / t if mode != "decode" else None}
    return {
        "dataset": name, "files": len(index), "accepted": len(paths), "video_seconds": video_s, "clips": clips,
        "modes": rows,
        "ingest1_over_decode": rows["ingest x1"]["seconds"] / rows["decode"]["seconds"],
        "speedup_2_workers": rows["ingest x1"]["seconds"] / rows["ingest x2"]["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real-clips", type=Path, default=ROOT.parent / "shared" / "data" / "real_clips")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_ingestion.json")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        datasets = [("demo", demo_folder(Path(tmp)))]
        if args.real_clips.is_dir():
            datasets.insert(0, ("real_clips", args.real_clips))
        else:
            print(f"note: {args.real_clips} not found, real clips skipped", file=sys.stderr)
        for name, folder in datasets:
            results.append(bench_dataset(name, folder, args.repeats))

    header = f"{'dataset':<11} {'mode':<10} {'seconds':>8} {'video s/s':>10} {'clips/s':>8}"
    print(header + "\n" + "-" * len(header))
    for r in results:
        for mode, row in r["modes"].items():
            clips = f"{row['clips_per_s']:8.1f}" if row["clips_per_s"] else f"{'-':>8}"
            print(f"{r['dataset']:<11} {mode:<10} {row['seconds']:8.3f} {row['video_s_per_s']:10.1f} {clips}")
        print(f"{r['dataset']:<11} ingest x1 / decode time = {r['ingest1_over_decode']:.2f} (target <= 1.3); "
              f"x2 speed-up = {r['speedup_2_workers']:.2f} (target >= 1.7)")
    report = {"benchmark": "ingestion", "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "pyav": av.__version__, "repeats": args.repeats, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Ingestion throughput against the bare decoder, side by side in one run.

For each dataset (the real clips of ../shared/data and the synthetic demo set), times:
- `decode`: PyAV alone decoding every frame of the same streams of the same files (the floor);
- `ingest x1`: the ingestion library with 1 worker (fresh shard folder, so nothing is skipped);
- `ingest x2`: the same with 2 worker processes.
Each is run `--repeats` times, interleaved, and the median is kept.

Long videos (generated: 320x240 H.264 at 25 fps with 16 kHz AAC, `--long-minutes`, default 1 and 30):
each is ingested by one worker in a fresh process, which reports the worker's peak resident memory
and the wall time, against PyAV decoding the whole file; with `--baseline-rev REV` the same is
measured in the same run for the ingestion code of git revision REV (e.g. the last release).
Prints tables, writes JSON.
Targets: ingest x1 <= 1.3 x decode time (issue 2); the worker's peak memory on the 30-minute video
within 1.2 x the 1-minute one's, and ingestion of a long video much cheaper than decoding it whole
(issue 13).

    python benchmarks/bench_ingestion.py [--repeats 3] [--long-minutes 1,30] [--baseline-rev 679b4e0]
        [--out benchmarks/results/bench_ingestion.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from fractions import Fraction

import numpy as np

from pemt_pipeline.atomic import write_text
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


def bench_dataset(name: str, folder: Path, repeats: int, baseline: Path | None) -> dict:
    """The modes on one folder; with a `baseline` source, also that code's ingestion and ours, each
    with 1 worker in a fresh process over the whole folder (`fresh x1`, `baseline x1`)."""
    index = build_index(VideoSource(folder))
    _, counts, manifest = timed_ingest(index, 1)  # warm-up; tells which files are accepted
    accepted = index[index["video_id"].isin(manifest["video_id"])]
    paths = accepted["path"].tolist()
    times = {"decode": [], "ingest x1": [], "ingest x2": []}
    if baseline is not None:
        times |= {"fresh x1": [], "baseline x1": []}
    for _ in range(repeats):
        times["decode"].append(bare_decode(paths))
        times["ingest x1"].append(timed_ingest(accepted, 1)[0])
        times["ingest x2"].append(timed_ingest(accepted, 2)[0])
        if baseline is not None:
            times["fresh x1"].append(measure_ingestion(folder, None)["seconds"])
            times["baseline x1"].append(measure_ingestion(folder, baseline)["seconds"])
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
        "fresh_over_baseline": (rows["fresh x1"]["seconds"] / rows["baseline x1"]["seconds"]
                                if baseline is not None else None),
    }


def make_long_video(path: Path, minutes: float) -> Path:
    """320x240 H.264 (a moving gradient, a keyframe every 10 s) with a 16 kHz mono AAC tone."""
    seconds, fps, rate = minutes * 60, 25, 16000
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": "250"})
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        aus = out.add_stream("aac", rate=rate, layout="mono")
        ramp = np.tile(np.arange(320, dtype=np.uint8)[None, :, None], (240, 1, 3))
        sample = 0
        for i in range(int(seconds * fps)):  # interleaved as a muxer writes real files
            frame = av.VideoFrame.from_ndarray(np.roll(ramp, i, axis=1), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(frame))
            while sample < (i + 1) * rate // fps:
                t = np.arange(sample, sample + 1024) / rate
                af = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :],
                                                format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = rate, sample, Fraction(1, rate)
                out.mux(aus.encode(af))
                sample += 1024
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))
    return path


_MEASURE = """
import json, resource, sys, time
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
folder, shards = sys.argv[1], sys.argv[2]
cfg = IngestConfig(shard_dir=shards, workers=1, progress=False)
index = build_index(VideoSource(folder), cfg.extensions)
with open("/proc/self/statm") as f:
    parent = int(f.read().split()[1]) * resource.getpagesize() / 2**20  # resident now, MB
start = time.perf_counter()
manifest, rejects, counts = ingest_all(index, cfg)
seconds = time.perf_counter() - start
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
peak = children if children else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024, "start_rss_mb": parent,
                  "growth_mb": peak / 1024 - parent,
                  "accepted": counts["accepted"], "rejected": rejects[["reason", "detail"]].values.tolist()}))
"""


def measure_ingestion(folder: Path, src: Path | None) -> dict:
    """Ingest `folder` with one worker in a fresh process (the code in `src`, or the installed one)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    with tempfile.TemporaryDirectory() as shards:
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(folder), shards], capture_output=True, text=True,
                             env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_source(rev: str, where: Path) -> Path:
    """The `src/` of git revision `rev`, extracted under `where`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where / "src"


def bench_long_videos(minutes: list[float], baseline: Path | None, tmp: Path) -> list[dict]:
    rows = []
    for m in minutes:
        folder = tmp / f"long_{m:g}min"
        folder.mkdir()
        path = make_long_video(folder / "long.mp4", m)
        row = {"minutes": m, "file_mb": path.stat().st_size / 2**20, "decode_s": bare_decode([str(path)]),
               "ingest": measure_ingestion(folder, None)}
        if baseline is not None:
            row["baseline"] = measure_ingestion(folder, baseline)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real-clips", type=Path, default=ROOT.parent / "shared" / "data" / "real_clips")
    parser.add_argument("--long-minutes", default="1,30", help="lengths of the generated long videos ('' for none)")
    parser.add_argument("--baseline-rev", default=None, help="git revision whose ingestion is measured alongside")
    parser.add_argument("--skip-datasets", action="store_true", help="only the long videos")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_ingestion.json")
    args = parser.parse_args()

    results, long_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        datasets = [] if args.skip_datasets else [("demo", demo_folder(Path(tmp)))]
        if args.real_clips.is_dir() and not args.skip_datasets:
            datasets.insert(0, ("real_clips", args.real_clips))
        elif not args.skip_datasets:
            print(f"note: {args.real_clips} not found, real clips skipped", file=sys.stderr)
        baseline = baseline_source(args.baseline_rev, Path(tmp)) if args.baseline_rev else None
        for name, folder in datasets:
            results.append(bench_dataset(name, folder, args.repeats, baseline))
        minutes = [float(m) for m in args.long_minutes.split(",") if m.strip()]
        long_rows = bench_long_videos(minutes, baseline, Path(tmp)) if minutes else []

    header = f"{'dataset':<11} {'mode':<10} {'seconds':>8} {'video s/s':>10} {'clips/s':>8}"
    print(header + "\n" + "-" * len(header))
    for r in results:
        for mode, row in r["modes"].items():
            clips = f"{row['clips_per_s']:8.1f}" if row["clips_per_s"] else f"{'-':>8}"
            print(f"{r['dataset']:<11} {mode:<10} {row['seconds']:8.3f} {row['video_s_per_s']:10.1f} {clips}")
        print(f"{r['dataset']:<11} ingest x1 / decode time = {r['ingest1_over_decode']:.2f} (target <= 1.3); "
              f"x2 speed-up = {r['speedup_2_workers']:.2f} (target >= 1.7)")
        if r["fresh_over_baseline"] is not None:
            print(f"{r['dataset']:<11} fresh x1 / baseline x1 = {r['fresh_over_baseline']:.2f} (this code against "
                  f"{args.baseline_rev}, both in a fresh process over the whole folder)")
    if long_rows:
        header = (f"{'video':<8} {'MB':>6} {'decode s':>9} {'ingest s':>9} {'ingest/decode':>14} "
                  f"{'worker peak MB':>15} {'baseline s':>11} {'base peak MB':>13} {'base growth MB':>15}")
        print("\n" + header + "\n" + "-" * len(header))
        for row in long_rows:
            ing, base = row["ingest"], row.get("baseline")
            base_cols = (f"{base['seconds']:11.2f} {base['peak_rss_mb']:13.0f} {base['growth_mb']:15.0f}" if base
                         else f"{'-':>11} {'-':>13} {'-':>15}")
            print(f"{row['minutes']:>5g}min {row['file_mb']:6.1f} {row['decode_s']:9.2f} {ing['seconds']:9.2f} "
                  f"{ing['seconds'] / row['decode_s']:14.3f} {ing['peak_rss_mb']:15.0f} {base_cols}")
        peaks = [row["ingest"]["peak_rss_mb"] for row in long_rows]
        print(f"worker peak memory, longest / shortest video: {max(peaks) / min(peaks):.2f} (target <= 1.2). "
              "worker peak: the peak resident memory of the worker that decoded (shared pages of the parent "
              "included); base peak: the baseline decodes in its own process (no workers), so its peak includes "
              "the parent; base growth: that peak over the process's resident memory when ingestion started")
    report = {"benchmark": "ingestion", "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "pyav": av.__version__, "repeats": args.repeats, "results": results, "long_videos": long_rows,
              "baseline_rev": args.baseline_rev}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

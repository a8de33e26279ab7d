"""Frame codecs of the clip shards (raw, h264, jpeg), side by side in one run: size, quality, cost.

For each dataset (the real clips of ../shared/data/real_clips; the synthetic demo set, built from
conf/base/parameters_demo_data.yml) x configuration (conf/base; conf/paper layered on it) x codec:
- storage: shard bytes per video-second (sum of shard file sizes / sum of the manifest's
  duration_s) and shard bytes / the accepted videos' source file bytes;
- quality: PSNR (dB, uint8 RGB) of each real clip (clip_mask True) against the raw-codec shard of
  the same video and configuration (the same frames, stored exactly): mean and worst clip;
- ingestion: wall time of `ingest_all` into a fresh shard folder with 1 worker, and / raw's time.
Loader (conf/paper only: 32 frames, paper augmentation, 112 px crops): a torch DataLoader over
ShardClipDataset(train=True) with 1 and 2 workers, each codec's shards (decode + augmentation):
real clips/s, frames/s and clips/s per worker, over a fixed number of items after a warm-up.
Training (conf/base only, the demo shards): the default conf/base training (model, loss, augment,
batch of 8 videos, content-aware batches over a uniform negative table, num_workers 0) for raw and
h264: steps/s and clips/s of a few steps after warm-up (each step's time is the loop's own
per-step window, logging excluded), and h264 / raw.
Every timed part is run `--repeats` times with the codecs' order rotated between repeats (machine
noise hits all alike); the median is kept. Prints tables, writes JSON.

Targets (the pass/fail columns):
- conf/paper, real clips: shard bytes <= 1.5 x the source files' bytes;
- PSNR >= 35 dB against raw (mean over clips; the worst clip is shown too);
- ingestion time <= 1.5 x raw's;
- >= 50 paper-size clips/s per loader worker;
- conf/base training throughput of the default codec (h264) within 10% of raw's.

    python benchmarks/bench_storage.py [--quick] [--repeats 3] [--codecs raw,h264,jpeg]
        [--h264-crf 18] [--h264-preset veryfast] [--jpeg-quality 90] [--demo-videos 64]
        [--loader-items 16] [--loader-datasets real_clips,demo] [--train-steps 8]
        [--out benchmarks/results/bench_storage.json]

The full run takes about 14 minutes on the 2-core CPU machine (--quick: 24 demo videos, 1 repeat,
6 loader items on the real clips only, 1 + 2 training steps: about 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader

from pemt_pipeline.atomic import write_text
from pemt_pipeline.features.embed import clip_table
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.shards import ShardReader
from pemt_pipeline.media.synthetic import DemoConfig, generate_demo_dataset
from pemt_pipeline.project_config import project_model_config
from pemt_pipeline.features.dataset import AugmentConfig, ShardClipDataset, collate
from pemt_pipeline.training.loop import prepare_inputs, run_training, training_configs

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("base", "paper")
TARGETS = {"source_ratio": 1.5, "psnr_db": 35.0, "ingest_over_raw": 1.5, "clips_per_s_per_worker": 50.0,
           "training_within": 0.10}
LOADER_TIMEOUT_S = 300  # a loader worker that delivers nothing for this long is an error, not a wait


# --- configuration ---------------------------------------------------------------------------------

def merged(a: dict, b: dict) -> dict:
    """`b` deep-merged onto `a` (as Kedro layers conf/<env> onto conf/base)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def conf(group: str, config: str) -> dict:
    """The `group:` block of conf/base/parameters_<group>.yml, with conf/paper's layered on for 'paper'."""
    def load(env: str) -> dict:
        path = ROOT / "conf" / env / f"parameters_{group}.yml"
        return yaml.safe_load(path.read_text())[group] if path.is_file() else {}
    return merged(load("base"), load("paper")) if config == "paper" else load("base")


def ingest_config(config: str, codec: str, shard_dir: Path, args) -> IngestConfig:
    params = {k: v for k, v in conf("ingestion", config).items() if k not in IngestConfig.CATALOG_KEYS}
    params.update(shard_dir=str(shard_dir), frame_codec=codec, progress=False, workers=1)
    params.update({k: v for k, v in (("h264_crf", args.h264_crf), ("h264_preset", args.h264_preset),
                                     ("jpeg_quality", args.jpeg_quality)) if v is not None})
    return IngestConfig.from_dict(params)


def rotations(items: list, repeats: int):
    """`repeats` passes over `items`, each starting one further along (interleaved, order rotated)."""
    for r in range(repeats if items else 0):
        k = r % len(items)
        yield items[k:] + items[:k]


# --- datasets --------------------------------------------------------------------------------------

def demo_folder(folder: Path, n_videos: int | None) -> Path:
    params = conf("demo_data", "base")
    files, labels = generate_demo_dataset(DemoConfig.from_dict({**params, "n_videos": n_videos or params["n_videos"]}))
    for rel, blob in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(blob)
    labels.to_csv(folder / "labels.csv", index=False)
    return folder


# --- ingestion, storage, quality -------------------------------------------------------------------

def ingest_codecs(index: pd.DataFrame, config: str, codecs: list[str], where: Path, args) -> dict[str, dict]:
    """Each codec ingested `repeats` times (interleaved) into a fresh folder; the last one's shards stay."""
    runs = {c: {"samples": []} for c in codecs}
    for order in rotations(codecs, args.repeats):
        for codec in order:
            shard_dir = where / config / codec
            shutil.rmtree(shard_dir, ignore_errors=True)
            cfg = ingest_config(config, codec, shard_dir, args)
            start = time.perf_counter()
            manifest, _, _ = ingest_all(index, cfg)
            runs[codec]["samples"].append(time.perf_counter() - start)
            runs[codec]["manifest"], runs[codec]["settings"] = manifest, cfg.codec.settings()
    ids = {c: tuple(r["manifest"]["video_id"]) for c, r in runs.items()}
    if len(set(ids.values())) != 1:
        raise RuntimeError(f"the codecs accepted different videos: {ids}")
    return runs


def storage(manifest: pd.DataFrame, index: pd.DataFrame) -> dict:
    shard_bytes = sum(Path(p).stat().st_size for p in manifest["shard_path"])
    source_bytes = sum(os.path.getsize(p) for p in index.set_index("video_id").loc[manifest["video_id"], "path"])
    return {"shard_bytes": shard_bytes, "source_bytes": source_bytes,
            "bytes_per_video_s": shard_bytes / float(manifest["duration_s"].sum()),
            "over_source": shard_bytes / source_bytes}


def clip_psnr(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """PSNR (dB) per clip of uint8 [n, F, H, W, 3] frames; inf where identical."""
    mse = np.array([np.mean((r.astype(np.float32) - t) ** 2) for r, t in zip(ref, test)])
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0 ** 2 / mse)


def quality(manifest: pd.DataFrame, reference: pd.DataFrame) -> dict:
    """PSNR of every real clip of `manifest`'s shards against the same video's shard in `reference`."""
    ref_paths = reference.set_index("video_id")["shard_path"]
    values = []
    for vid, path in zip(manifest["video_id"], manifest["shard_path"]):
        ref = ShardReader(ref_paths[vid]).read(("frames", "clip_mask"))
        test = ShardReader(path).read(("frames",))["frames"]
        if test.shape != ref["frames"].shape:
            raise RuntimeError(f"{vid}: frames {test.shape} against raw {ref['frames'].shape}")
        mask = ref["clip_mask"].astype(bool)
        values.extend(clip_psnr(ref["frames"][mask], test[mask]))
    return {"psnr_mean_db": float(np.mean(values)), "psnr_worst_db": float(np.min(values)), "clips": len(values)}


def bench_ingestion(name: str, index: pd.DataFrame, config: str, codecs: list[str], where: Path, args) -> list[dict]:
    """One row per codec: storage and ingestion time (quality is added by `add_quality`)."""
    runs = ingest_codecs(index, config, codecs, where, args)
    raw_time = statistics.median(runs["raw"]["samples"]) if "raw" in runs else None
    rows = []
    for codec, run in runs.items():
        seconds = statistics.median(run["samples"])
        rows.append({"dataset": name, "config": config, "codec": codec, "settings": run["settings"],
                     "videos": len(run["manifest"]), "video_seconds": float(run["manifest"]["duration_s"].sum()),
                     "clips": int(run["manifest"]["n_clips"].sum()), **storage(run["manifest"], index),
                     "ingest_seconds": seconds, "ingest_samples": run["samples"],
                     "ingest_over_raw": seconds / raw_time if raw_time else None,
                     "manifest": run["manifest"]})  # the manifest is kept for the later parts, not written
    return rows


def add_quality(rows: list[dict]) -> None:
    """PSNR of each non-raw row against the raw row of the same dataset and configuration."""
    raw = {(r["dataset"], r["config"]): r["manifest"] for r in rows if r["codec"] == "raw"}
    for r in rows:
        if r["codec"] != "raw" and (r["dataset"], r["config"]) in raw:
            r |= quality(r["manifest"], raw[r["dataset"], r["config"]])


# --- loader throughput (conf/paper) ----------------------------------------------------------------

def loader_rate(manifest: pd.DataFrame, augment: AugmentConfig, workers: int, items: int, batch: int) -> dict:
    """Real clips/s of a DataLoader over the shards (train=True), over `items` batches after a warm-up
    of 2 batches per worker (which also absorbs the workers' start)."""
    warmup = 2 * workers
    n = len(manifest)
    order = [i % n for i in range((warmup + items) * batch)]
    loader = DataLoader(ShardClipDataset(manifest, augment, train=True, seed=0), batch_size=batch, sampler=order,
                        num_workers=workers, collate_fn=collate, timeout=LOADER_TIMEOUT_S)
    clips, start = 0, None
    for k, b in enumerate(loader):
        if k == warmup - 1:
            start = time.perf_counter()
        elif k >= warmup:
            clips += int(b["clip_mask"].sum())
    seconds = time.perf_counter() - start
    frames = int(b["video"].shape[3])
    return {"clips_per_s": clips / seconds, "frames_per_s": clips * frames / seconds, "seconds": seconds,
            "clips": clips}


def bench_loader(rows: list[dict], workers: list[int], args) -> list[dict]:
    """Every (codec, workers) of these rows (one dataset at conf/paper), interleaved over repeats."""
    augment = AugmentConfig.from_dict(conf("training", "paper")["augment"])
    jobs = [(row, w) for row in rows for w in workers]
    samples: dict[int, list[dict]] = {i: [] for i in range(len(jobs))}
    for order in rotations(list(range(len(jobs))), args.repeats):
        for i in order:
            row, w = jobs[i]
            samples[i].append(loader_rate(row["manifest"], augment, w, args.loader_items, args.loader_batch))
    out = []
    for i, (row, w) in enumerate(jobs):
        rate = statistics.median(s["clips_per_s"] for s in samples[i])
        frames = samples[i][0]["frames_per_s"] / samples[i][0]["clips_per_s"]
        out.append({"dataset": row["dataset"], "codec": row["codec"], "workers": w, "clips_per_s": rate,
                    "frames_per_s": rate * frames, "clips_per_s_per_worker": rate / w,
                    "samples_clips_per_s": [s["clips_per_s"] for s in samples[i]],
                    "items": args.loader_items, "batch_videos": args.loader_batch})
    return out


# --- training throughput (conf/base) ---------------------------------------------------------------

def uniform_negatives(clips: pd.DataFrame) -> pd.DataFrame:
    """Every clip of another video equally likely: a valid negative table without mining one (the
    batches' composition, not their cost, depends on it)."""
    video = clips["video_id"].to_numpy(object)
    a, c = np.nonzero(video[:, None] != video[None, :])
    table = pd.DataFrame({"anchor": a.astype(np.int64), "candidate": c.astype(np.int64)})
    table["probability"] = (1.0 / table.groupby("anchor")["anchor"].transform("size")).astype(np.float32)
    return table


def training_rate(manifest: pd.DataFrame, warmup: int, steps: int, where: Path) -> dict:
    """The default conf/base training for warmup + steps steps; rates over the last `steps` from the
    loop's per-step windows (log_every 1; its windows exclude logging and checkpoints)."""
    params = conf("training", "base")
    loss, augment = params.pop("loss"), params.pop("augment")
    shutil.rmtree(where, ignore_errors=True)
    params.update(steps=warmup + steps, log_every=1, checkpoint_every=warmup + steps, progress=False, resume=False,
                  device="cpu", checkpoint_dir=str(where / "ckpt"), dvclive_dir=str(where / "live"),
                  refresh_negatives_every=0)  # the loader's speed, not the table's refreshes
    clips = clip_table(manifest)
    train_cfg, loss_cfg, augment_cfg = training_configs({**params, "loss": loss, "augment": augment})
    inputs = prepare_inputs(manifest, clips, uniform_negatives(clips), project_model_config(ROOT / "conf", "base"),
                            loss_cfg, augment_cfg, train_cfg)
    n_clips = inputs.manifest["n_clips"]
    if n_clips.nunique() != 1:
        raise RuntimeError("videos with different clip counts: clips per step is not known exactly")
    clips_per_step = params["batch_size"] * int(n_clips.iloc[0]) * params.get("grad_accum", 1)
    history = run_training(inputs)["history"][warmup:]
    seconds = sum(clips_per_step / h["clips_per_second"] for h in history)
    return {"steps_per_s": len(history) / seconds, "clips_per_s": len(history) * clips_per_step / seconds}


def bench_training(rows: list[dict], args, where: Path) -> list[dict]:
    samples: dict[str, list[dict]] = {row["codec"]: [] for row in rows}
    by_codec = {row["codec"]: row for row in rows}
    for order in rotations(list(by_codec), args.repeats):
        for codec in order:
            samples[codec].append(training_rate(by_codec[codec]["manifest"], args.train_warmup, args.train_steps,
                                                where / codec))
    out = [{"dataset": "demo", "codec": c, "steps": args.train_steps, "warmup_steps": args.train_warmup,
            "steps_per_s": statistics.median(x["steps_per_s"] for x in s),
            "clips_per_s": statistics.median(x["clips_per_s"] for x in s),
            "samples_steps_per_s": [x["steps_per_s"] for x in s]} for c, s in samples.items()]
    raw = next((r for r in out if r["codec"] == "raw"), None)
    for r in out:
        r["over_raw"] = r["steps_per_s"] / raw["steps_per_s"] if raw else None
    return out


# --- report ----------------------------------------------------------------------------------------

def storage_checks(r: dict) -> dict:
    paper_real = (r["config"], r["dataset"]) == ("paper", "real_clips")
    lossy = "psnr_mean_db" in r
    return {"size": r["over_source"] <= TARGETS["source_ratio"] if paper_real else None,
            "psnr_mean": r["psnr_mean_db"] >= TARGETS["psnr_db"] if lossy else None,
            "psnr_worst": r["psnr_worst_db"] >= TARGETS["psnr_db"] if lossy else None,
            "ingest_time": (r["ingest_over_raw"] <= TARGETS["ingest_over_raw"]
                            if r["codec"] != "raw" and r["ingest_over_raw"] else None)}


def loader_checks(r: dict) -> dict:
    return {"per_worker": r["clips_per_s_per_worker"] >= TARGETS["clips_per_s_per_worker"]}


def training_checks(r: dict) -> dict:
    within = r["over_raw"] >= 1 - TARGETS["training_within"] if r["codec"] != "raw" and r["over_raw"] else None
    return {"within": within}


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else "ok" if ok else "FAIL"


def fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{spec}}"


def print_table(title: str, header: str, lines: list[str]) -> None:
    print(f"\n{title}\n{header}\n{'-' * len(header)}")
    print("\n".join(lines))


def print_storage(rows: list[dict]) -> None:
    header = (f"{'dataset':<10} {'config':<6} {'codec':<5} {'KB/video-s':>10} {'x source':>8} {'PSNR mean':>9} "
              f"{'worst':>6} {'ingest s':>8} {'x raw':>6} | {'size<=1.5x':>10} {'PSNR>=35':>10} {'time<=1.5x':>10}")
    lines = []
    for r in rows:
        c = r["checks"]
        psnr = "-" if c["psnr_mean"] is None else f"{verdict(c['psnr_mean'])}/{verdict(c['psnr_worst'])}"
        lines.append(f"{r['dataset']:<10} {r['config']:<6} {r['codec']:<5} {r['bytes_per_video_s'] / 1e3:10.1f} "
                     f"{r['over_source']:8.2f} {fmt(r.get('psnr_mean_db'), '.1f', 9)} "
                     f"{fmt(r.get('psnr_worst_db'), '.1f', 6)} {r['ingest_seconds']:8.2f} "
                     f"{fmt(r['ingest_over_raw'], '.2f', 6)} | {verdict(c['size']):>10} {psnr:>10} "
                     f"{verdict(c['ingest_time']):>10}")
    print_table("storage, quality, ingestion", header, lines)
    print("KB/video-s: shard kB per second of video; x source: shard bytes / the accepted source files' bytes; PSNR: "
          "dB against the raw shard, mean / worst real clip (verdicts: mean/worst); ingest: median wall s, 1 worker, "
          "fresh folder; size target: conf/paper, real clips")


def print_loader(rows: list[dict]) -> None:
    header = (f"{'dataset':<10} {'codec':<5} {'workers':>7} {'clips/s':>8} {'frames/s':>9} {'clips/s/worker':>14} | "
              f"{'>=50/worker':>11}")
    print_table("loader, conf/paper (32 frames, 112 px crops, paper augmentation, train=True)", header, [
        f"{r['dataset']:<10} {r['codec']:<5} {r['workers']:7d} {r['clips_per_s']:8.1f} {r['frames_per_s']:9.0f} "
        f"{r['clips_per_s_per_worker']:14.1f} | {verdict(r['checks']['per_worker']):>11}" for r in rows])


def print_training(rows: list[dict]) -> None:
    header = f"{'dataset':<10} {'codec':<5} {'steps/s':>8} {'clips/s':>8} {'x raw':>6} | {'within 10%':>10}"
    print_table("training, conf/base (default model and training, CPU)", header, [
        f"{r['dataset']:<10} {r['codec']:<5} {r['steps_per_s']:8.3f} {r['clips_per_s']:8.1f} "
        f"{fmt(r['over_raw'], '.2f', 6)} | {verdict(r['checks']['within']):>10}" for r in rows])


def finite(obj):
    """JSON-safe: non-finite floats (identical frames: infinite PSNR) become null."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


# --- main ------------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small: 24 demo videos, 1 repeat, fewer loader items "
                        "and training steps, loader on the real clips only")
    parser.add_argument("--repeats", type=int, default=None, help="timed parts' repeats (median); default 3, quick 1")
    parser.add_argument("--codecs", default="raw,h264,jpeg", help="raw is the PSNR and time reference")
    parser.add_argument("--h264-crf", type=int, default=None, help="override ingestion.h264_crf")
    parser.add_argument("--h264-preset", default=None, help="override ingestion.h264_preset")
    parser.add_argument("--jpeg-quality", type=int, default=None, help="override ingestion.jpeg_quality")
    parser.add_argument("--demo-videos", type=int, default=None, help="default: the demo config's (64), quick 24")
    parser.add_argument("--loader-items", type=int, default=None, help="timed batches per loader run (16, quick 6)")
    parser.add_argument("--loader-batch", type=int, default=1, help="videos per loader batch")
    parser.add_argument("--loader-datasets", default=None, help="default real_clips,demo (quick: real_clips)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed training steps (8, quick 2)")
    parser.add_argument("--train-warmup", type=int, default=None, help="untimed first steps (2, quick 1)")
    parser.add_argument("--real-clips", type=Path, default=ROOT.parent / "shared" / "data" / "real_clips")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_storage.json")
    args = parser.parse_args()
    quick = args.quick
    for name, full, small in (("repeats", 3, 1), ("demo_videos", None, 24), ("loader_items", 16, 6),
                              ("loader_datasets", "real_clips,demo", "real_clips"), ("train_steps", 8, 2),
                              ("train_warmup", 2, 1)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    return args


def main() -> None:
    args = parse_args()
    logging.getLogger("pemt_pipeline").setLevel(logging.ERROR)  # rejected files are expected (real clips)
    started = time.perf_counter()
    storage_rows, loader_rows, training_rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_storage_") as tmp:
        tmp = Path(tmp)
        datasets = {"demo": demo_folder(tmp / "demo_videos", args.demo_videos)}
        if args.real_clips.is_dir():
            datasets = {"real_clips": args.real_clips, **datasets}
        else:
            print(f"note: {args.real_clips} not found, real clips skipped", file=sys.stderr)
        for name, folder in datasets.items():
            index = build_index(VideoSource(folder))
            for config in CONFIGS:
                storage_rows += bench_ingestion(name, index, config, args.codecs, tmp / "shards" / name, args)
        # the loader runs before any frame is decoded in this process: its workers are forked from it
        # (as training's are) and inherit its decoding state (swscale converters whose threads do not
        # survive a fork: a worker that reuses one hangs)
        for name in [d.strip() for d in args.loader_datasets.split(",") if d.strip() in datasets]:
            rows = [r for r in storage_rows if (r["dataset"], r["config"]) == (name, "paper")]
            loader_rows += bench_loader(rows, [1, 2], args)
        add_quality(storage_rows)
        demo_base = [r for r in storage_rows if (r["dataset"], r["config"]) == ("demo", "base")
                     and r["codec"] in ("raw", "h264")]
        training_rows = bench_training(demo_base, args, tmp / "training")
    wall = time.perf_counter() - started
    for rows, checks in ((storage_rows, storage_checks), (loader_rows, loader_checks),
                         (training_rows, training_checks)):
        for r in rows:
            r["checks"] = checks(r)

    print_storage(storage_rows)
    print_loader(loader_rows)
    print_training(training_rows)
    print(f"\nwall time {wall:.0f} s ({'quick' if args.quick else 'full'} run, {args.repeats} repeat(s))")
    report = {"benchmark": "storage", "platform": platform.platform(), "cpu_count": os.cpu_count(),
              "torch": torch.__version__,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "targets": TARGETS, "wall_seconds": wall,
              "storage": [{k: v for k, v in r.items() if k != "manifest"} for r in storage_rows],
              "loader": loader_rows, "training": training_rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(finite(report), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

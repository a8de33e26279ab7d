"""Negatives from the learned CNN (training.refresh_negatives_every): quality and cost against the
fixed table of the initial CNNs.

    python benchmarks/refresh_negatives.py [--seeds 0,1,2] [--every 0,50] [--steps 200] [--threads 2]
                                           [--out benchmarks/results/refresh_negatives.json]

On the ingested demo data (data/03_primary/manifest.parquet, the clip embeddings and the negative
table of the default `kedro run`; `kedro run --pipelines demo_data,ingestion,embedding,negatives`
makes them), with the conf/base parameters: per seed and refresh interval (0 = the fixed table),
one training run of `--steps` steps, then the evaluation library's numbers for its model:
  cpp_auc, median rank    CPP retrieval among the test videos (evaluation.video.retrieval_report;
                          median rank of video->audio and audio->video, chance (n+1)/2)
  audio probe             top-1 of the linear probe on the audio CNN's features of the labelled
                          audio folder evaluation.audio.root (evaluation.audio.audio_probe, stream
                          "audio_cnn"), skipped when the folder is absent
  video probe             top-1 of the linear probe on the pooled audio-visual features of the
                          demo videos (evaluation.video.probe_report, stream "multimodal")
and the training's wall time split into training proper and the refreshes (embedding the training
clips with the current CNNs + building the table), with the clips embedded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pemt_pipeline.atomic import write_text  # noqa: E402
from pemt_pipeline.evaluation.audio import AudioFolderConfig, audio_probe  # noqa: E402 (after the sys.path line)
from pemt_pipeline.evaluation.features import video_features  # noqa: E402
from pemt_pipeline.evaluation.probe import ProbeConfig  # noqa: E402
from pemt_pipeline.evaluation.video import VideoEvalConfig, probe_report, retrieval_report  # noqa: E402
from pemt_pipeline.features import ClipEmbeddings  # noqa: E402
from pemt_pipeline.media.ingest import IngestConfig  # noqa: E402
from pemt_pipeline.models import ModelConfig  # noqa: E402
from pemt_pipeline.project_config import project_parameters  # noqa: E402
from pemt_pipeline.training.distributed import train_model  # noqa: E402
from pemt_pipeline.training.loop import prepare_inputs, training_configs  # noqa: E402
from pemt_pipeline.training.refresh import RefreshConfig  # noqa: E402

METRICS = ("cpp_auc", "median_rank", "audio_probe_top1", "video_probe_top1", "train_seconds", "refresh_seconds")


def evaluate(trained, manifest: pd.DataFrame, params: dict, augment) -> dict:
    """The evaluation library's CPP AUC, median ranks and probes of one trained model."""
    cfg = VideoEvalConfig.from_dict({**params["evaluation"], "progress": False})
    probe = ProbeConfig.from_dict(params["evaluation"].get("probe"))
    features = video_features(trained.model, manifest, augment, cfg.batch_size, cfg.device, cfg.progress)
    retrieval = retrieval_report(trained, features, manifest, cfg)
    video_probe = probe_report({"pretrained": features}, manifest, cfg, probe)["pretrained"]
    out = {"cpp_auc": retrieval["cpp_auc"], "n_test_videos": retrieval["n_videos"],
           "median_rank_video_to_audio": retrieval["video_to_audio"]["median_rank"],
           "median_rank_audio_to_video": retrieval["audio_to_video"]["median_rank"],
           "chance_median_rank": retrieval["video_to_audio"]["chance_median_rank"],
           "video_probe_top1": video_probe["multimodal"]["top1"]}
    out["median_rank"] = (out["median_rank_video_to_audio"] + out["median_rank_audio_to_video"]) / 2
    audio = dict(params["evaluation"]["audio"])
    root, labels_csv = ROOT / audio.pop("root"), audio.pop("labels_csv", None)
    if root.is_dir():
        folder_cfg = AudioFolderConfig.from_dict({**audio, "progress": False})
        result = audio_probe(trained.model, root, labels_csv or folder_cfg.default_labels_csv(root),
                             IngestConfig.from_dict(params["ingestion"]).mel, folder_cfg, probe)
        out["audio_probe_top1"] = result["streams"]["audio_cnn"]["top1"]
        out["audio_probe_files"] = result["counts"]["featurised"]
    else:
        out["audio_probe_top1"] = float("nan")
    return out


def run(seed: int, every: int, steps: int, params: dict, data: dict, tmp: Path) -> dict:
    """One training run (fresh checkpoint folder) and its evaluation."""
    training = dict(params["training"])
    training.update(steps=steps, seed=seed, refresh_negatives_every=every, progress=False,
                    checkpoint_dir=str(tmp / f"seed{seed}_every{every}" / "ckpt"),
                    dvclive_dir=str(tmp / f"seed{seed}_every{every}" / "live"))
    train_cfg, loss, augment = training_configs(training)
    refresh = RefreshConfig.from_params(params["negatives"], {**params["embedding"], "progress": False})
    inputs = prepare_inputs(data["manifest"], data["clips"], data["negatives"], ModelConfig.from_dict(params["model"]),
                            loss, augment, train_cfg, refresh)
    trained, summary = train_model(inputs)
    refreshes = summary.get("negative_refreshes", {"count": 0, "seconds": 0.0, "clips_embedded": 0})
    row = {"seed": seed, "every": every, "steps": summary["steps"], "wall_seconds": summary["wall_seconds"],
           "refresh_seconds": refreshes["seconds"], "refreshes": refreshes["count"],
           "clips_embedded": refreshes["clips_embedded"],
           "train_seconds": round(summary["wall_seconds"] - refreshes["seconds"], 2),
           "final_loss": summary["final"]["total"]}
    start = time.perf_counter()
    row.update(evaluate(trained, data["manifest"], params, augment))
    row["eval_seconds"] = round(time.perf_counter() - start, 2)
    return row


def aggregate(rows: list[dict], intervals: list[int]) -> dict:
    """Mean and standard deviation over seeds per interval and metric."""
    out = {}
    for every in intervals:
        mine = [r for r in rows if r["every"] == every]
        out[str(every)] = {m: {"mean": statistics.fmean(r[m] for r in mine),
                               "std": statistics.stdev(r[m] for r in mine) if len(mine) > 1 else 0.0}
                           for m in METRICS}
        out[str(every)]["clips_embedded"] = mine[0]["clips_embedded"]
        out[str(every)]["refreshes"] = mine[0]["refreshes"]
    return out


def print_table(rows: list[dict], summary: dict) -> None:
    head = (f"{'every':>6} {'seed':>5} {'cpp AUC':>8} {'med rank':>9} {'audio top1':>11} {'video top1':>11} "
            f"{'train s':>8} {'refresh s':>10} {'refreshes':>10} {'clips emb':>10}")
    print(head)
    for r in rows:
        print(f"{r['every']:>6} {r['seed']:>5} {r['cpp_auc']:>8.3f} {r['median_rank']:>9.2f} "
              f"{r['audio_probe_top1']:>11.3f} {r['video_probe_top1']:>11.3f} {r['train_seconds']:>8.1f} "
              f"{r['refresh_seconds']:>10.2f} {r['refreshes']:>10} {r['clips_embedded']:>10}")
    print("mean +- std over seeds")
    for every, s in summary.items():
        cells = " ".join(f"{m}={s[m]['mean']:.3f}+-{s[m]['std']:.3f}" for m in METRICS)
        print(f"  every={every:>4}: {cells}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--every", default="0,50", help="refresh intervals in steps (0 = the fixed table)")
    p.add_argument("--steps", type=int, default=200, help="training steps per run (conf/base: 200)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "refresh_negatives.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the catalog's relative paths (manifest shard paths)
    seeds = [int(s) for s in args.seeds.split(",")]
    intervals = [int(e) for e in args.every.split(",")]
    params = project_parameters(ROOT / "conf")
    data = {"manifest": pd.read_parquet("data/03_primary/manifest.parquet"),
            "clips": ClipEmbeddings(params["embedding"]["output_dir"]).clips,
            "negatives": pd.read_parquet("data/05_model_input/negatives.parquet")}
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for every in intervals:
                rows.append(run(seed, every, args.steps, params, data, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    summary = aggregate(rows, intervals)
    print_table(rows, summary)
    result = {"config": {**vars(args), "negatives": params["negatives"],
                         "training": {k: v for k, v in params["training"].items() if k not in ("loss", "augment")},
                         "videos": len(data["manifest"]), "clips": len(data["clips"])},
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "cpus": multiprocessing.cpu_count()},
              "rows": rows, "summary": summary, "wall_seconds": time.perf_counter() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(Path(args.out), json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()

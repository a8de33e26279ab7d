"""Training throughput and memory: the low-rank shared model against the unshared one, side by side.

CPU (always): on the ingested demo data (data/03_primary/manifest.parquet; run `kedro run` first),
`--steps` training steps of the conf/base model per variant, each in a fresh process: clips/s and
peak resident memory. With `--chain`, also the wall time of the whole default `kedro run` in a
throwaway copy of the project (target: at most 10 minutes on the 2-core CPU machine).
GPU (when CUDA is present): the conf/paper model in bf16 on synthetic clips: clips/s, peak memory,
model FLOPs utilisation (FLOPs of one step counted by torch.utils.flop_counter / step time / peak
TFLOP/s) and the largest batch (videos) that fits, shared vs unshared.

    python benchmarks/bench_training.py [--steps 20] [--chain] [--out benchmarks/results/bench_training.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pemt_pipeline.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> model overrides
    "unshared": {"share_layers": False, "share_transformers": "none"},
    "lowrank shared": {"share_layers": True, "share_transformers": "lowrank"},
}


def _cpu_variant(name: str, steps: int, queue: mp.Queue) -> None:
    import pandas as pd
    import yaml

    from pemt_pipeline.features import ClipEmbeddings
    from pemt_pipeline.project_config import project_model_config
    from pemt_pipeline.models import ModelConfig
    from pemt_pipeline.training.loop import prepare_inputs, run_training, training_configs

    os.chdir(ROOT)
    manifest = pd.read_parquet("data/03_primary/manifest.parquet")
    clips = ClipEmbeddings("data/04_feature/clip_embeddings").clips
    negatives = pd.read_parquet("data/05_model_input/negatives.parquet")
    params = yaml.safe_load((ROOT / "conf/base/parameters_training.yml").read_text())["training"]
    loss, augment = params.pop("loss"), params.pop("augment")
    model = {**project_model_config(ROOT / "conf", "base").to_dict(), **VARIANTS[name]}
    with tempfile.TemporaryDirectory() as tmp:
        params.update(steps=steps, log_every=steps, checkpoint_every=steps, progress=False, warmup_steps=1,
                      checkpoint_dir=f"{tmp}/ckpt", dvclive_dir=f"{tmp}/live",
                      refresh_negatives_every=0)  # the step's speed, not the table's refreshes
        train_cfg, loss_cfg, augment_cfg = training_configs({**params, "loss": loss, "augment": augment})
        inputs = prepare_inputs(manifest, clips, negatives, ModelConfig.from_dict(model), loss_cfg, augment_cfg,
                                train_cfg)
        summary = run_training(inputs)
    queue.put({"clips_per_second": summary["final"]["clips_per_second"], "wall_seconds": summary["wall_seconds"],
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def cpu_rows(steps: int) -> dict[str, dict]:
    ctx = mp.get_context("spawn")
    rows = {}
    for name in VARIANTS:
        queue = ctx.Queue()
        proc = ctx.Process(target=_cpu_variant, args=(name, steps, queue))
        proc.start()
        rows[name] = queue.get()
        proc.join()
    return rows


def chain_seconds() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        shutil.copy(ROOT / "pyproject.toml", project)
        shutil.copytree(ROOT / "conf", project / "conf")
        (project / "src").mkdir()
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kedro", "run"], cwd=project, check=True, capture_output=True,
                       env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
        return time.perf_counter() - start


def gpu_rows(videos: int, peak_tflops: float) -> dict[str, dict]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pemt_pipeline.models import ModelConfig
    from pemt_pipeline.project_config import project_model_config
    from pemt_pipeline.training.losses import LossConfig, PretrainingObjective

    paper = project_model_config(ROOT / "conf", env="paper").to_dict()
    rows = {}
    for name, overrides in VARIANTS.items():
        cfg = ModelConfig.from_dict({**paper, **overrides})

        def batch(b: int) -> dict:
            return {"video": torch.randn(b, 10, 3, 32, 112, 112, device="cuda"),
                    "audio": torch.randn(b, 10, 80, 128, device="cuda"),
                    "clip_mask": torch.ones(b, 10, dtype=torch.bool, device="cuda"),
                    "video_index": torch.arange(b, device="cuda")}

        def step(model, objective, opt, data):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = objective(model, data)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        from pemt_pipeline.models import PEMTModel

        model = PEMTModel(cfg).cuda()
        objective = PretrainingObjective(model, LossConfig()).cuda()
        opt = torch.optim.AdamW([*model.parameters(), *objective.parameters()], lr=1e-4)
        data = batch(videos)
        step(model, objective, opt, data)  # warm-up
        with FlopCounterMode(display=False) as counter:
            step(model, objective, opt, data)
        flops = counter.get_total_flops()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(5):
            step(model, objective, opt, data)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 5
        largest, b = videos, videos
        while b <= 1024:
            try:
                step(model, objective, opt, batch(b))
                largest, b = b, b * 2
            except torch.OutOfMemoryError:
                break
        rows[name] = {"clips_per_second": videos * 10 / seconds, "step_seconds": seconds,
                      "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
                      "mfu": flops / seconds / (peak_tflops * 1e12), "largest_batch_videos": largest}
        del model, objective, opt
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chain", action="store_true", help="also time the whole default `kedro run`")
    parser.add_argument("--gpu-videos", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_training.json")
    args = parser.parse_args()
    if not (ROOT / "data/05_model_input/negatives.parquet").is_file():
        sys.exit("run `kedro run` first: the benchmark trains on the demo data it ingests")

    import torch

    report = {"benchmark": "training", "platform": platform.platform(), "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "steps": args.steps, "cpu": cpu_rows(args.steps)}
    print(f"{'variant (CPU, conf/base)':<26} {'clips/s':>8} {'peak RSS MB':>12}")
    for name, row in report["cpu"].items():
        print(f"{name:<26} {row['clips_per_second']:8.1f} {row['peak_rss_mb']:12.0f}")
    cpu = report["cpu"]
    speedup = cpu['lowrank shared']['clips_per_second'] / cpu['unshared']['clips_per_second']
    print(f"low-rank / unshared: throughput x{speedup:.2f}, "
          f"peak memory x{cpu['lowrank shared']['peak_rss_mb'] / cpu['unshared']['peak_rss_mb']:.2f}")
    if args.chain:
        report["default_chain_seconds"] = chain_seconds()
        print(f"default `kedro run` on the demo data: {report['default_chain_seconds']:.0f} s (target <= 600 s)")
    if torch.cuda.is_available():
        report["gpu"] = gpu_rows(args.gpu_videos, args.peak_tflops)
        for name, row in report["gpu"].items():
            print(f"GPU {name}: {row['clips_per_second']:.0f} clips/s, {row['peak_memory_gb']:.1f} GB, "
                  f"MFU {row['mfu']:.1%}, largest batch {row['largest_batch_videos']} videos")
    else:
        print("no CUDA device: GPU section skipped")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Fine-tuning on the demo data: the demo's pretrained model against its random initialisation, by the
`video` (Kinetics-Sounds) and `visual_cnn` (UCF101) protocols, clip- and video-level top-1, 3 seeds.

In a throwaway copy of the project (conf/base: 64 demo videos, 24 for training and 40 for test):
`kedro run` (the default chain: pretraining with training.seed 0), then for each seed s
`kedro run --pipelines finetune --tags video,visual_cnn` with finetune.<protocol>.seed = s (head init,
batches, augmentation, dropout) and finetune.baseline_seed = s (the random initialisation). The
pretrained model is the same for every seed: the seeds are fine-tuning seeds. Prints a table, writes JSON.

    python benchmarks/finetune_demo.py [--seeds 0,1,2] [--workdir DIR] [--out benchmarks/results/finetune_demo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pemt_pipeline.atomic import write_text

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ("video", "visual_cnn")
INITS = ("pretrained", "random_init")
LEVELS = ("clip", "video")


def project_copy(where: Path) -> Path:
    """The project's configuration and pyproject in `where` (its runs write `where/data`)."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(ROOT / name, where)
    shutil.copytree(ROOT / "conf", where / "conf", ignore=shutil.ignore_patterns("local"), dirs_exist_ok=True)
    (where / "conf" / "local").mkdir(exist_ok=True)
    return where


def kedro(project: Path, *args: str) -> float:
    """`kedro run ARGS` in the project copy; returns its wall seconds (stops on failure)."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kedro", "run", *args], cwd=project, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        sys.exit(f"kedro run {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", type=Path, default=None, help="project copy to use (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/finetune_demo.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        project = project_copy(args.workdir or Path(tmp) / "project")
        pretrained = (project / "data/06_models/pretrained_model.pt").exists()  # a --workdir used before
        seconds = {} if pretrained else {"pretraining_chain": kedro(project)}
        runs = {}
        for seed in seeds:
            params = ",".join([*(f"finetune.{p}.seed={seed}" for p in PROTOCOLS), f"finetune.baseline_seed={seed}",
                               f"finetune.checkpoint_dir=data/06_models/finetune_checkpoints/seed{seed}",
                               f"finetune.dvclive_dir=data/08_reporting/dvclive/finetune/seed{seed}"])
            seconds[f"finetune_seed{seed}"] = kedro(project, "--pipelines", "finetune", "--tags", ",".join(PROTOCOLS),
                                                    "--params", params)
            runs[seed] = json.loads((project / "data/08_reporting/finetune_results.json").read_text())
    table = {}
    for protocol in PROTOCOLS:
        for init in INITS:
            for level in LEVELS:
                values = [runs[s][protocol][init][level]["top1"] for s in seeds]
                table[f"{protocol}/{init}/{level}_top1"] = {"per_seed": values, "mean": float(np.mean(values)),
                                                            "std": float(np.std(values, ddof=1)) if len(values) > 1
                                                            else 0.0}
    first = runs[seeds[0]]
    facts = {p: {k: first[p][k] for k in ("n_train_videos", "n_test_videos", "test_crops", "crop", "classes")}
             | {"views": first[p]["pretrained"]["views"], "chance_top1": first[p]["pretrained"]["video"]["chance_top1"]}
             for p in PROTOCOLS}
    out = {"seeds": seeds, "seed_kind": "fine-tuning seeds (finetune.<protocol>.seed and finetune.baseline_seed); "
                                        "one pretrained model (training.seed 0)",
           "table": table, "data": facts, "seconds": {k: round(v, 1) for k, v in seconds.items()},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(out, indent=2) + "\n")

    print(f"seeds {seeds} ({out['seed_kind']})")
    print(f"{'protocol':<11} {'init':<12} {'clip top-1':>22} {'video top-1':>22}")
    for protocol in PROTOCOLS:
        for init in INITS:
            cells = []
            for level in LEVELS:
                t = table[f"{protocol}/{init}/{level}_top1"]
                cells.append(f"{t['mean']:.3f} ± {t['std']:.3f} " + "/".join(f"{v:.2f}" for v in t["per_seed"]))
            print(f"{protocol:<11} {init:<12} {cells[0]:>22} {cells[1]:>22}")
    print(f"chance (most frequent test class): {facts['video']['chance_top1']:.3f}; wall seconds: {out['seconds']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

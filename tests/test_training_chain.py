"""The default `kedro run` now trains; a SIGKILLed training resumes with the next command."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import torch

from pemt_pipeline.training.checkpoint import LAST
from tests.conftest import make_project_copy, run_kedro

SMALL = {
    "demo_data": {"n_videos": 8, "min_duration_s": 3.0, "max_duration_s": 4.0, "test_fraction": 0.25},
    "ingestion": {"fps": 8, "frames_per_clip": 4, "frame_stride": 1, "clips_per_video": 4, "short_side": 32,
                  "n_mels": 16, "mel_frames": 8},
    "embedding": {"crop": 28},
    "model": {"max_clips": 4, "visual": {"width": 4}, "audio": {"width": 4},
              "transformer": {"hidden": 32, "n_layers": 1, "n_heads": 2, "ffn": 64}},
    "negatives": {"k": 8},
    "training": {"steps": 12, "batch_size": 4, "warmup_steps": 2, "log_every": 2, "checkpoint_every": 4,
                 "augment": {"crop": 28}},
}


def _flat(params: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in params.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={json.dumps(v) if isinstance(v, list) else v}")
    return out


def test_default_chain_trains_and_a_killed_training_resumes(tmp_path, monkeypatch):
    chain = make_project_copy(tmp_path / "chain")
    monkeypatch.chdir(chain)
    run_kedro(chain, None, SMALL)
    summary = json.loads((chain / "data/08_reporting/training_summary.json").read_text())
    assert summary["steps"] == 12 and summary["resumed_from"] is None
    for term in ("mep_visual", "mep_audio", "mep_multimodal", "cpp"):
        assert term in summary["final"]
    model_file = chain / "data/06_models/pretrained_model.pt"
    state = torch.load(model_file, weights_only=True)
    assert {"model", "model_config"} <= set(state)
    uninterrupted = torch.load(chain / "data/06_models/checkpoints" / LAST, weights_only=True)["model"]

    # The same training in another copy of the project, killed once its first checkpoint exists.
    killed = make_project_copy(tmp_path / "killed")
    shutil.copytree(chain / "data", killed / "data")
    shutil.rmtree(killed / "data/06_models/checkpoints")
    (killed / "data/06_models/pretrained_model.pt").unlink()
    cmd = [sys.executable, "-m", "kedro", "run", "--pipelines", "training", "--params", ",".join(_flat(SMALL))]
    # one torch thread, as the in-process runs (float sums differ across thread counts)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ckpt = killed / "data/06_models/checkpoints" / LAST
    deadline = time.monotonic() + 300
    while not ckpt.exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "data/06_models/pretrained_model.pt").exists()
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step_at_kill < 12

    monkeypatch.chdir(killed)
    run_kedro(killed, ["training"], SMALL)
    resumed = json.loads((killed / "data/08_reporting/training_summary.json").read_text())
    assert resumed["resumed_from"] == step_at_kill and resumed["steps"] == 12
    final = torch.load(ckpt, weights_only=True)["model"]
    for k in uninterrupted:
        assert torch.equal(final[k], uninterrupted[k]), k
    assert pd.read_parquet(killed / "data/05_model_input/negatives.parquet").shape[0] > 0

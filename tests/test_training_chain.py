"""The default `kedro run` now trains; a SIGKILLed training resumes with the next command."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import torch

from pemt_pipeline.training.checkpoint import LAST
from pemt_pipeline.kill_points import KILL_AFTER_CHECKPOINT
from tests.conftest import make_project_copy, run_kedro

# Every run here uses the test environment (conf/test) as it is: 12 steps, a checkpoint every 4.


def test_default_chain_trains_and_a_killed_training_resumes(tmp_path, monkeypatch):
    chain = make_project_copy(tmp_path / "chain")
    monkeypatch.chdir(chain)
    run_kedro(chain, None, env="test")
    summary = json.loads((chain / "data/08_reporting/training_summary.json").read_text())
    assert summary["steps"] == 12 and summary["resumed_from"] is None
    for term in ("mep_visual", "mep_audio", "mep_multimodal", "cpp"):
        assert term in summary["final"]
    model_file = chain / "data/06_models/pretrained_model.pt"
    state = torch.load(model_file, weights_only=True)
    assert {"model", "model_config"} <= set(state)
    uninterrupted = torch.load(chain / "data/06_models/checkpoints" / LAST, weights_only=True)["model"]

    # The same training in another copy of the project, SIGKILLed right after its step-8 checkpoint
    # (the loop's test-only hook: the process kills itself there, as a crash would; no polling).
    killed = make_project_copy(tmp_path / "killed")
    shutil.copytree(chain / "data", killed / "data")
    shutil.rmtree(killed / "data/06_models/checkpoints")
    (killed / "data/06_models/pretrained_model.pt").unlink()
    cmd = [sys.executable, "-m", "kedro", "run", "--pipelines", "training", "--env", "test"]
    # one torch thread, as the in-process runs (float sums differ across thread counts)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", KILL_AFTER_CHECKPOINT: "8"}
    proc = subprocess.run(cmd, cwd=killed, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}, not killed:\n{proc.stderr[-3000:]}"
    assert not (killed / "data/06_models/pretrained_model.pt").exists()
    ckpt = killed / "data/06_models/checkpoints" / LAST
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert step_at_kill == 8

    monkeypatch.chdir(killed)
    run_kedro(killed, ["training"], env="test")
    resumed = json.loads((killed / "data/08_reporting/training_summary.json").read_text())
    assert resumed["resumed_from"] == 8 and resumed["steps"] == 12
    final = torch.load(ckpt, weights_only=True)["model"]
    for k in uninterrupted:
        assert torch.equal(final[k], uninterrupted[k]), k
    assert pd.read_parquet(killed / "data/05_model_input/negatives.parquet").shape[0] > 0

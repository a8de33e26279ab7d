"""A killed ingestion resumes with the next command and ends with the same manifest."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd

from pemt_pipeline.kill_points import KILL_AFTER_SHARDS
from tests.conftest import make_project_copy, run_kedro

# conf/base, not the test environment (conf/test): its clips make a run long enough to be killed
# part-way, and the real clips' outcomes (7 accepted) follow from them. One worker: shards appear one by one.
PARAMS = {"workers": 1}


def _kedro_cmd(source: Path) -> list[str]:
    return [sys.executable, "-m", "kedro", "run", "--pipelines", "ingestion",
            "--params", f"ingestion.source_dir={source},ingestion.workers=1"]


def test_killed_ingestion_resumes_to_the_same_manifest(tmp_path, real_clips, monkeypatch):
    reference = make_project_copy(tmp_path / "reference")
    monkeypatch.chdir(reference)
    run_kedro(reference, ["ingestion"], {"ingestion": {"source_dir": str(real_clips), **PARAMS}})
    expected = pd.read_parquet("data/03_primary/manifest.parquet")

    resumed = make_project_copy(tmp_path / "resumed")
    monkeypatch.chdir(resumed)
    shards = resumed / "data/02_intermediate/shards"
    # SIGKILLed (with its worker) right after its 2nd shard, as a crash would (pemt_pipeline.kill_points)
    proc = subprocess.run(_kedro_cmd(real_clips), cwd=resumed, capture_output=True, text=True, start_new_session=True,
                          env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", KILL_AFTER_SHARDS: "2"}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}, not killed:\n{proc.stderr[-3000:]}"
    written = sorted(p.name for p in shards.glob("*.safetensors"))
    assert len(written) == 2 < len(expected), "the run must be interrupted after its 2nd shard"
    assert not (resumed / "data/03_primary/manifest.parquet").exists()
    (shards / ".half-written.abc.tmp").write_bytes(b"junk from a killed writer")

    run_kedro(resumed, ["ingestion"], {"ingestion": {"source_dir": str(real_clips), **PARAMS}})
    got = pd.read_parquet("data/03_primary/manifest.parquet")
    pd.testing.assert_frame_equal(got, expected)
    summary = json.loads((resumed / "data/08_reporting/ingestion_summary.json").read_text())
    assert summary["skipped"] == len(written) and summary["accepted"] == len(expected) - len(written)
    assert not list(shards.glob(".*.tmp"))


def test_changed_parameters_rebuild_every_shard(project, real_clips):
    run_kedro(project, ["ingestion"], {"ingestion": {"source_dir": str(real_clips), **PARAMS}})
    first = json.loads(Path("data/08_reporting/ingestion_summary.json").read_text())
    run_kedro(project, ["ingestion"], {"ingestion": {"source_dir": str(real_clips), **PARAMS}})
    again = json.loads(Path("data/08_reporting/ingestion_summary.json").read_text())
    run_kedro(project, ["ingestion"], {"ingestion": {"source_dir": str(real_clips), "n_mels": 32, **PARAMS}})
    changed = json.loads(Path("data/08_reporting/ingestion_summary.json").read_text())
    assert (first["accepted"], first["skipped"]) == (7, 0)
    assert (again["accepted"], again["skipped"]) == (0, 7)
    assert (changed["accepted"], changed["skipped"]) == (7, 0)

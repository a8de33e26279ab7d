"""`dvc repro` in a fresh clone runs the stages; a second one does nothing; push/pull use the local remote."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import PROJECT_ROOT


def _project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=PROJECT_ROOT,
                         check=True, capture_output=True, text=True).stdout
    return [f for f in out.splitlines() if (PROJECT_ROOT / f).is_file()]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "KEDRO_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


# Test-sized values written into the clone's parameter files (the stages read conf/base).
SMALL = {
    "parameters_demo_data.yml": {"demo_data": {"n_videos": 8, "min_duration_s": 3.0, "max_duration_s": 4.0}},
    "parameters_training.yml": {"training": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "log_every": 2}},
}


def _shrink(conf: Path) -> None:
    for name, override in SMALL.items():
        params = yaml.safe_load((conf / name).read_text())
        for section, values in override.items():
            params[section].update(values)
        (conf / name).write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_repro_twice_and_push_pull(tmp_path):
    clone = tmp_path / "clone"
    for rel in _project_files():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / rel, clone / rel)
    _shrink(clone / "conf" / "base")
    _run(["git", "init", "-q"], clone)
    _run(["git", "add", "-A"], clone)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"], clone)

    first = _run(["dvc", "repro"], clone)
    for stage in ("demo_data", "ingestion", "embedding", "negatives", "training"):
        assert f"Running stage '{stage}'" in first, stage
    assert (clone / "dvc.lock").is_file() and (clone / "data/06_models/pretrained_model.pt").is_file()

    second = _run(["dvc", "repro"], clone)
    assert "Running stage" not in second and "up to date" in second

    # One parameter of one stage: only that stage and the ones after it run again.
    negatives = clone / "conf/base/parameters_negatives.yml"
    negatives.write_text(negatives.read_text().replace("k: 32 ", "k: 24 "))
    third = _run(["dvc", "repro"], clone)
    assert "Running stage 'negatives'" in third and "Running stage 'training'" in third
    for stage in ("demo_data", "ingestion", "embedding"):
        assert f"Running stage '{stage}'" not in third, stage

    _run(["dvc", "push"], clone)
    assert any((clone / ".dvc_remote").rglob("*"))
    shutil.rmtree(clone / "data/02_intermediate/shards")
    (clone / "data/03_primary/manifest.parquet").unlink()
    _run(["dvc", "pull"], clone)
    assert any((clone / "data/02_intermediate/shards").glob("*.safetensors"))
    status = _run(["dvc", "status"], clone)
    assert "up to date" in status

"""`dvc repro` in a fresh clone runs the stages; a second one does nothing; push/pull use the local remote."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import PROJECT_ROOT, env_params, shared_data


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


# The clone's conf/base gets the test environment's values (conf/test): the stages run `kedro run`, which
# reads conf/base, the parameters DVC tracks. On purpose beyond it: a 4-step training and a 2-step report
# of two variants (DVC's caching is tested, not the training), and parameters_negatives.yml kept as in
# conf/base, since the test edits its `k: 32` line below.
OWN = {
    "training": {"steps": 4, "warmup_steps": 1},
    "report": {"steps": 2},
}
VARIANTS = {"mid_lowrank": {"fusion": "mid", "share_layers": True, "share_transformers": "lowrank"},
            "late_lowrank": {"fusion": "late", "share_layers": True, "share_transformers": "lowrank"}}
STAGES = ("demo_data", "ingestion", "embedding", "negatives", "training", "evaluation", "audio_evaluation",
          "pruning", "report")


def _shrink(conf: Path) -> None:
    for path in sorted((PROJECT_ROOT / "conf" / "test").glob("parameters_*.yml")):
        group = path.stem.removeprefix("parameters_")
        if group == "negatives":
            continue
        params = env_params(group, OWN.get(group))
        if group == "report":
            params["variants"] = VARIANTS  # the variants replace conf/base's (names are namespaces)
        (conf / path.name).write_text(yaml.safe_dump({group: params}, sort_keys=False))


def test_dvc_repro_twice_exp_run_and_push_pull(tmp_path):
    clone = tmp_path / "clone"
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared_data("urbansound8k").parent)  # ../shared beside the clone
    for rel in _project_files():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / rel, clone / rel)
    _shrink(clone / "conf" / "base")
    _run(["git", "init", "-q"], clone)
    _run(["git", "add", "-A"], clone)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"], clone)

    first = _run(["dvc", "repro"], clone)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first, stage
    assert (clone / "dvc.lock").is_file() and (clone / "data/06_models/pretrained_model.pt").is_file()
    report = (clone / "data/08_reporting/report.html").read_text()
    assert "mid_lowrank" in report and "Pruning" in report

    second = _run(["dvc", "repro"], clone)
    assert "Running stage" not in second and "up to date" in second

    # One parameter of one stage: only that stage and the ones after it run again.
    negatives = clone / "conf/base/parameters_negatives.yml"
    negatives.write_text(negatives.read_text().replace("k: 32 ", "k: 24 "))
    third = _run(["dvc", "repro"], clone)
    assert "Running stage 'negatives'" in third and "Running stage 'training'" in third
    for stage in ("demo_data", "ingestion", "embedding"):
        assert f"Running stage '{stage}'" not in third, stage

    _run(["git", "add", "-A"], clone)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "k=24"], clone)
    exp = _run(["dvc", "exp", "run", "-S", "conf/base/parameters_evaluation.yml:evaluation.probe.weight_decay=0.01"],
               clone)
    assert "Running stage 'evaluation'" in exp and "Running stage 'training'" not in exp
    shown = _run(["dvc", "exp", "show", "--no-pager", "--csv"], clone)
    header = shown.splitlines()[0]
    for metric in ("probe_top1/pretrained/multimodal", "audio_probe_top1/pretrained/audio_cnn", "steps",
                   "evaluation.probe.weight_decay"):
        assert metric in header, metric
    assert "0.01" in shown

    _run(["dvc", "push"], clone)
    assert any((clone / ".dvc_remote").rglob("*"))
    shutil.rmtree(clone / "data/02_intermediate/shards")
    (clone / "data/03_primary/manifest.parquet").unlink()
    _run(["dvc", "pull"], clone)
    assert any((clone / "data/02_intermediate/shards").glob("*.safetensors"))
    status = _run(["dvc", "status"], clone)
    assert "up to date" in status

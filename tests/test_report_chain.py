"""Evaluation (UrbanSound8K audio probe included), the fusion report on a small grid, and the
quickstart notebook, end to end through Kedro on the demo data."""

import json
import os
import re

import nbformat
import yaml
from nbclient import NotebookClient

from tests.conftest import PROJECT_ROOT, make_project_copy, run_kedro, shared_data

# Every run uses the test environment (conf/test; its report: 4 steps per variant, its pruning: one
# target, 2 search steps). On purpose beyond it: this small grid and two seeds (two runs per variant,
# asserted), written into conf/base because the variant names are the report pipeline's namespaces,
# and the audio evaluation's folder.
GRID = {"early_lowrank": {"fusion": "early", "share_layers": True, "share_transformers": "lowrank", "rank": 8},
        "mid_lowrank": {"fusion": "mid", "share_layers": True, "share_transformers": "lowrank", "rank": 8},
        "mid_unshared": {"fusion": "mid", "share_layers": False, "share_transformers": "none"}}


def test_evaluation_report_and_notebook(tmp_path, monkeypatch):
    project = make_project_copy(tmp_path / "project")
    report_params = project / "conf/base/parameters_report.yml"
    params = yaml.safe_load(report_params.read_text())
    params["report"].update(variants=GRID, seeds=[0, 1])
    report_params.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(project)
    run_kedro(project, None, env="test")  # the default chain ends with the video evaluation
    summary = json.loads((project / "data/08_reporting/evaluation_summary.json").read_text())
    for stream in ("visual_cnn", "audio_cnn", "visual", "audio", "multimodal"):
        for model in ("pretrained", "random_init"):
            assert 0.0 <= summary[f"probe_top1/{model}/{stream}"] <= 1.0
    assert summary["retrieval/video_to_audio/chance_recall@1"] == 1 / summary_n(project)
    probe = json.loads((project / "data/08_reporting/evaluation/probe_metrics.json").read_text())
    m = probe["pretrained"]["multimodal"]
    assert {"top1", "per_class", "confusion", "classes"} <= set(m)

    urbansound = shared_data("urbansound8k")
    run_kedro(project, ["evaluation"], {"evaluation": {"audio": {"root": str(urbansound)}}}, env="test")
    audio = json.loads((project / "data/08_reporting/audio_evaluation_summary.json").read_text())
    assert audio["audio_probe_files"] + audio["audio_probe_rejected"] == 400
    for model in ("pretrained", "random_init"):
        assert audio[f"audio_probe_top1/{model}/audio_cnn"] > 0.15  # 10 classes: chance 0.1

    run_kedro(project, ["report"], env="test")
    html = (project / "data/08_reporting/report.html").read_text()
    md = (project / "data/08_reporting/report.md").read_text()
    for text in (html, md):
        for name in GRID:
            assert name in text
        for heading in ("Parameters", "Training curves", "Linear probe", "Retrieval", "Cost", "Conclusion"):
            assert re.search(heading, text, re.IGNORECASE), heading
    assert "data:image/png;base64," in html
    for png in re.findall(r"\((figures/[^)]+\.png)\)", md):
        assert (project / "data/08_reporting" / png).is_file(), png
    results = json.loads((project / "data/08_reporting/report/fusion_results.json").read_text())
    assert set(results["variants"]) == set(GRID)
    assert all(len(v["runs"]) == 2 for v in results["variants"].values())
    params = {n: v["parameters"]["transformers"] for n, v in results["variants"].items()}
    assert params["mid_lowrank"] < params["mid_unshared"]

    # pruning adds its section to the report
    run_kedro(project, ["pruning"], env="test")
    html = (project / "data/08_reporting/report.html").read_text()
    assert re.search(r"<h2[^>]*>[^<]*Pruning", html), "no pruning section"

    notebook = nbformat.read(PROJECT_ROOT / "notebooks/quickstart.ipynb", as_version=4)
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(project)}}).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "anchor clip" in outputs and "sampled negatives" in outputs and "report figure(s)" in outputs
    images = sum("image/png" in o.get("data", {}) for c in notebook.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    assert images >= 3  # clips, negatives, at least one report figure


def summary_n(project) -> int:
    return json.loads((project / "data/08_reporting/evaluation/retrieval_metrics.json").read_text())["n_videos"]

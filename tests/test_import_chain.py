"""`kedro run --pipelines import_checkpoint` on the authors' fixture checkpoint, then the pipelines that
read a model file run on the imported one (`--params model_file=...`): evaluation, features, embedding,
pruning, finetune, and predict on the fine-tuned imported model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pemt_pipeline.hooks import ParameterError
from pemt_pipeline.models import load_trained
from tests.conftest import make_project_copy, run_kedro, shared_fixture

IMPORTED = "data/06_models/imported_model.pt"


@pytest.fixture(scope="module")
def imported_project(tmp_path_factory):
    """A project copy with the demo data ingested (conf/test) and the fixture checkpoint imported."""
    fixture = shared_fixture("avbert_small")
    project = make_project_copy(tmp_path_factory.mktemp("import") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        run_kedro(project, ["demo_data", "ingestion"], env="test")
        run_kedro(project, ["import_checkpoint"], {"import": {"path": str(fixture / "checkpoint.pyth"),
                                                              "authors_config": str(fixture / "config.yaml")}},
                  env="test")
    return project, fixture


def test_the_imported_model_file_reproduces_the_authors_outputs(imported_project):
    project, fixture = imported_project
    report = json.loads((project / "data/08_reporting/import_report.json").read_text())
    assert report["tensors"] == report["used"] + report["orthogonal_cache_checked"] + len(report["ignored"])
    assert report["configuration_from"]["n_layers, n_heads, dropout, audio strides"] == "the authors' config"
    trained = load_trained(project / IMPORTED)
    assert trained.cpp_head is None  # the release has no CPP head
    inputs = load_file(fixture / "inputs.safetensors")
    with torch.no_grad():
        out = trained.model(inputs["input.visual"], inputs["input.audio"][:, :, 0])
    mm = torch.cat([out.multimodal_visual.summary[:, None], out.multimodal_visual.clips,
                    out.multimodal_audio.summary[:, None], out.multimodal_audio.clips], 1)
    assert float((mm - inputs["expected_f32.multimodal.output"]).abs().max()) < 1e-4


def test_evaluation_embedding_and_pruning_run_on_the_imported_model(imported_project, monkeypatch):
    project, _ = imported_project
    monkeypatch.chdir(project)
    model_file = {"model_file": IMPORTED}
    run_kedro(project, ["evaluation"], {**model_file, "evaluation": {"batch_size": 4, "probe": {"max_iter": 20}}},
              env="test", tags=["video"])
    summary = json.loads((project / "data/08_reporting/evaluation_summary.json").read_text())
    assert "no CPP head" in summary["retrieval"]["skipped"]  # the release has none; the probe needs none
    assert 0 <= summary["probe_top1/pretrained/multimodal"] <= 1
    run_kedro(project, ["features"], model_file, env="test")
    features = json.loads((project / "data/08_reporting/features_summary.json").read_text())
    assert features["videos"] == 8 and features["streams"]["visual_cnn"] == 256 and features["streams"]["visual"] == 64
    run_kedro(project, ["embedding"], {"embedding": {"checkpoint": IMPORTED}}, env="test")
    embedding = json.loads((project / "data/08_reporting/embedding_summary.json").read_text())
    assert embedding["source"] == IMPORTED and embedding["dims"]["visual"] == 256  # the imported CNN's width
    pruning = {"targets": [0.5], "batch_size": 2, "batches": 2, "search": {"steps": 2}, "finetune": {"steps": 1},
               "latency": {"batch_size": 2, "warmup": 1, "repeats": 2}}
    run_kedro(project, ["pruning"], {**model_file, "pruning": pruning,
                                     "evaluation": {"batch_size": 4, "probe": {"max_iter": 20}}}, env="test")
    results = json.loads((project / "data/08_reporting/pruning_results.json").read_text())
    assert "skipped" in results["base"]["retrieval"] and results["config"]["model_file"].endswith(IMPORTED)
    [target] = results["targets"]
    assert 0 <= target["retrieval"]["cpp_auc"] <= 1  # the pruned model's CPP head, trained in the search
    assert "## Pruning" in (project / "data/08_reporting/report.md").read_text()


def test_finetune_and_predict_run_on_the_imported_model(imported_project, monkeypatch):
    project, _ = imported_project
    monkeypatch.chdir(project)
    run_kedro(project, ["finetune"], {"model_file": IMPORTED}, env="test", tags=["video"])
    results = json.loads((project / "data/08_reporting/finetune_results.json").read_text())["video"]
    assert results["model_source"] == IMPORTED and results["random_init"]["model_source"] == "random init"
    assert 0 <= results["pretrained"]["video"]["top1"] <= 1
    run_kedro(project, ["predict"], {"predict": {"source_dir": "data/01_raw/demo"}}, env="test")
    predictions = pd.read_csv(project / "data/07_model_output/predict/predictions.csv")
    assert len(predictions) == 8 and predictions["video_id"].is_unique


def test_training_refuses_a_model_file_it_would_overwrite(imported_project, monkeypatch):
    project, _ = imported_project
    monkeypatch.chdir(project)
    before = (project / IMPORTED).read_bytes()
    with pytest.raises(ParameterError, match="model_file='data/06_models/imported_model.pt' names the model"):
        run_kedro(project, ["training"], {"model_file": IMPORTED}, env="test")
    assert (project / IMPORTED).read_bytes() == before


def test_import_without_a_path_says_how_to_give_one(imported_project, monkeypatch):
    project, _ = imported_project
    monkeypatch.chdir(project)
    with pytest.raises(Exception, match=r"--params import\.path="):
        run_kedro(project, ["import_checkpoint"], env="test")

"""`kedro run --pipelines finetune` after the default chain (the demo's own pretrained model): both
protocols fine-tuned from the model file and from random init, reported side by side; then `predict`
on the demo folder with a broken file in it. One trained project is shared by the tests of this module."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pemt_pipeline.models import FINETUNED_FORMAT, load_finetuned, load_trained
from tests.conftest import make_project_copy, run_kedro

# The test environment (conf/test: video 6 steps of 2 videos, visual_cnn 12 steps of 4 single clips, per
# initialisation; 3 test crops of 28 px from 32 px frames), with on purpose a larger head learning rate
# (0.01; conf/base 1e-3) for both protocols: in their 6 and 12 steps the loss then falls clearly (what the
# first test asserts; at 1e-3 the visual_cnn protocol's random init, single clips under dropout 0.5, fell
# or rose with the random stream).
FINETUNE = {"finetune": {"video": {"head_lr": 0.01}, "visual_cnn": {"head_lr": 0.01, "dropout": 0.0}}}
STEPS = {"video": (6, 2), "visual_cnn": (12, 4)}  # (steps, log_every) of conf/test
PROTOCOLS = ("video", "visual_cnn")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A project copy after the default chain and `finetune --tags video,visual_cnn`, as the working directory."""
    project = make_project_copy(tmp_path_factory.mktemp("finetune") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        run_kedro(project, None, env="test")
        run_kedro(project, ["finetune"], FINETUNE, env="test", tags=list(PROTOCOLS))
        yield project


def test_finetune_reports_pretrained_beside_random_init(finetuned):
    results = json.loads((finetuned / "data/08_reporting/finetune_results.json").read_text())
    assert set(results) == set(PROTOCOLS)  # the audio protocol was not selected (--tags) nor run before
    summary = json.loads((finetuned / "data/08_reporting/finetune_summary.json").read_text())
    for protocol in PROTOCOLS:
        r = results[protocol]
        assert r["model_source"] == "data/06_models/pretrained_model.pt"
        assert r["n_train_videos"] == 4 and r["n_test_videos"] == 4 and r["test_crops"] == 3
        assert r["classes"] == ["circle", "diamond", "square", "triangle"]
        for init in ("pretrained", "random_init"):
            entry = r[init]
            assert entry["model_source"] == ("random init" if init == "random_init" else r["model_source"])
            assert entry["views"] == {"n_videos": 4, "n_views": 4 * 4 * 3, "clips_per_video": 4.0, "crops": 3}
            assert entry["video"]["n"] == 4 and entry["clip"]["n"] == 48
            for level in ("clip", "video"):
                m = entry[level]
                assert 0 <= m["top1"] <= m["top4"] == 1.0  # top-5 capped at the 4 classes
                assert np.asarray(m["confusion"]).sum() == m["n"] and set(m["per_class"]) == set(r["classes"])
                assert summary[f"finetune/{protocol}/{init}/{level}_top1"] == m["top1"]
            steps, log_every = STEPS[protocol]
            losses = [h["total"] for h in entry["training"]["history"]]  # each the mean of log_every steps
            assert len(losses) == steps // log_every and entry["training"]["steps"] == steps
            assert losses[-1] < losses[0], (protocol, init, losses)
            assert (finetuned / f"data/06_models/finetune_checkpoints/{protocol}/{init}/last.pt").is_file()
            assert (finetuned / f"data/08_reporting/dvclive/finetune/{protocol}/{init}/metrics.json").is_file()


def test_the_report_gains_the_fine_tuning_section(finetuned):
    report = (finetuned / "data/08_reporting/report.md").read_text()
    assert "## Fine-tuning" in report and "figures/finetune.png" in report
    assert "Fine-tuning (video): starting from data/06_models/pretrained_model.pt gives clip top-1" in report
    assert "kedro run --pipelines pruning" in report  # the other sections' hints


def test_finetuned_model_files_load_as_finetuned_and_as_plain_models(finetuned):
    for protocol in PROTOCOLS:
        path = finetuned / f"data/06_models/finetuned/{protocol}.pt"
        state = torch.load(path, weights_only=True)
        assert state["format"] == FINETUNED_FORMAT and state["protocol"] == protocol
        tuned = load_finetuned(path)
        assert tuned.classes == ["circle", "diamond", "square", "triangle"] and tuned.protocol == protocol
        plain = load_trained(path).model  # what evaluation, features and pruning read
        for k, v in plain.state_dict().items():
            assert torch.equal(v, tuned.model.state_dict()[k]), k


def test_predict_gives_one_row_per_video_and_lists_a_broken_file(finetuned, tmp_path):
    folder = tmp_path / "videos"
    shutil.copytree(finetuned / "data/01_raw/demo", folder)
    (folder / "labels.csv").unlink()  # prediction needs no labels
    (folder / "broken.mp4").write_bytes(bytes(range(256)) * 40)
    run_kedro(finetuned, ["predict"], {"predict": {"source_dir": str(folder), "top_k": 3}}, env="test")
    out = finetuned / "data/07_model_output/predict"
    predictions = pd.read_csv(out / "predictions.csv")
    videos = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.mp4") if p.name != "broken.mp4")
    assert len(videos) == 8 and sorted(predictions["path"]) == videos
    assert list(predictions.columns) == ["video_id", "path", "label_1", "score_1", "label_2", "score_2",
                                         "label_3", "score_3"]
    assert set(predictions[["label_1", "label_2", "label_3"]].to_numpy().ravel()) <= {"circle", "diamond", "square",
                                                                                       "triangle"}
    scores = predictions[["score_1", "score_2", "score_3"]].to_numpy()
    assert (np.diff(scores, axis=1) <= 0).all() and (scores > 0).all() and (scores.sum(1) <= 1 + 1e-6).all()
    rejects = pd.read_csv(out / "rejects.csv")
    assert list(zip(rejects["source_path"], rejects["reason"])) == [("broken.mp4", "not_media")]

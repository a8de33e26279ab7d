"""An unlabelled collection: evaluation runs what needs no labels (retrieval, CPP AUC) and says that the
linear probe needs labels, in the library and through Kedro (ingestion with `ingestion.layout: none`)."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from pemt_pipeline.evaluation.features import VideoFeatures
from pemt_pipeline.evaluation.probe import ProbeConfig
from pemt_pipeline.evaluation.video import VideoEvalConfig, headline_metrics, labelled_splits, probe_report
from tests.conftest import run_kedro
from tests.evaluation.test_audio_downstream import sound, write_wav


def features_of(n: int) -> dict[str, VideoFeatures]:
    rng = np.random.default_rng(0)
    one = VideoFeatures({"audio_cnn": rng.standard_normal((n, 4)).astype(np.float32)},
                        torch.zeros(n, 1, 2), torch.zeros(n, 1, 2), torch.ones(n, 1, dtype=torch.bool))
    return {"pretrained": one, "random_init": one}


def test_probe_report_on_an_unlabelled_manifest_says_it_needs_labels(caplog):
    manifest = pd.DataFrame({"video_id": [f"v{i}" for i in range(6)], "label": pd.array([None] * 6, dtype="string"),
                             "split": ["train"] * 4 + ["test"] * 2})
    cfg = VideoEvalConfig()
    with caplog.at_level(logging.WARNING, logger="pemt_pipeline.evaluation.video"):
        report = probe_report(features_of(6), manifest, cfg, ProbeConfig(), skip_unlabelled=True)
    assert list(report) == ["skipped"]
    assert report["skipped"].startswith("no labelled videos in the train split(s) ['train']: the linear probe "
                                        "needs labels (0 of 6 manifest videos are labelled")
    assert "linear probe skipped" in caplog.text
    with pytest.raises(ValueError, match=r"no labelled videos in the train split\(s\)"):
        probe_report(features_of(6), manifest, cfg, ProbeConfig())  # the report and pruning still need labels
    retrieval = {"video_to_audio": {"recall@1": 0.5, "n": 2}, "audio_to_video": {"recall@1": 0.5, "n": 2},
                 "cpp_balanced_accuracy": 0.6, "cpp_auc": 0.7}
    summary = headline_metrics(report, retrieval)
    assert summary["probe"] == {"skipped": report["skipped"]} and summary["retrieval/cpp_auc"] == 0.7
    assert not any(k.startswith("probe_top1") for k in summary)
    # labelled train videos but none in the test split: skipped too, saying which split lacks them
    manifest["label"] = pd.array(["a", "b", "a", "b", None, None], dtype="string")
    skipped = probe_report(features_of(6), manifest, cfg, ProbeConfig(), skip_unlabelled=True)["skipped"]
    assert skipped.startswith("no labelled videos in the test split(s) ['test']")
    manifest["label"] = pd.array(["a", "b", "a", "b", "a", "b"], dtype="string")
    train, test = labelled_splits(manifest, cfg)
    assert train.sum() == 4 and test.sum() == 2
    assert set(probe_report(features_of(6), manifest, cfg, ProbeConfig(), skip_unlabelled=True)) == {
        "pretrained", "random_init"}


def test_evaluation_of_an_unlabelled_collection(project, tmp_path):
    """Demo videos ingested without their labels (`ingestion.layout: none`), pretrained (conf/test), then the
    whole evaluation pipeline (its audio downstream on a small labelled sound folder)."""
    run_kedro(project, ["demo_data"], env="test")
    # no labels.csv read, so splits come from the hash of the path: 3 of the 8 held out
    run_kedro(project, ["ingestion", "embedding", "negatives", "training"],
              {"ingestion": {"layout": "none", "test_fraction": 0.3}}, env="test")
    manifest = pd.read_parquet(project / "data/03_primary/manifest.parquet")
    assert manifest["label"].isna().all() and (manifest["split"] == "test").sum() >= 2
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    rng, rows = np.random.default_rng(0), []
    for label in ("tone", "noise"):
        for i, split in enumerate(("train", "train", "test")):
            write_wav(sounds / f"{label}{i}.wav", sound(label, 1.0, 16000, 1, rng), 16000)
            rows.append((f"{label}{i}.wav", label, split))
    pd.DataFrame(rows, columns=["file", "label", "split"]).to_csv(sounds / "labels.csv", index=False)

    run_kedro(project, ["evaluation"], {"evaluation": {"audio": {"root": str(sounds), "fold_column": None}}},
              env="test")
    probe = json.loads((project / "data/08_reporting/evaluation/probe_metrics.json").read_text())
    assert list(probe) == ["skipped"] and "the linear probe needs labels" in probe["skipped"]
    summary = json.loads((project / "data/08_reporting/evaluation_summary.json").read_text())
    assert summary["probe"] == probe
    assert 0.0 <= summary["retrieval/cpp_auc"] <= 1.0 and "retrieval/video_to_audio/recall@1" in summary
    audio = json.loads((project / "data/08_reporting/audio_evaluation_summary.json").read_text())
    assert audio["audio_probe_files"] == 6

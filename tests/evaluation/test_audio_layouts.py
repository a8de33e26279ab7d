"""The audio downstream's ESC-50 layout (meta/esc50.csv, audio/) and its k-fold cross-validation protocol
(`audio_kfold`), on a small generated ESC-50 and on 40 files of UrbanSound8K."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pemt_pipeline.evaluation.audio import (AudioFolderConfig, audio_kfold, audio_window_features, index_audio_folder,
                                            kfold_headline)
from pemt_pipeline.evaluation.probe import ProbeConfig, classification_metrics, fit_probe, probe_scores
from pemt_pipeline.media.ingest import IngestConfig
from pemt_pipeline.models import ModelConfig, random_model
from tests.conftest import env_params, shared_data
from tests.evaluation.test_audio_downstream import CLASSES, TINY_MEL, TINY_MODEL, sound, write_wav

FOLDS = 5
CFG = AudioFolderConfig(layout="esc50", device="cpu", progress=False)


@pytest.fixture(scope="module")
def esc50(tmp_path_factory) -> Path:
    """The ESC-50 release's layout: 3 classes x 5 folds x 2 files named <fold>-<src>-<take>-<target>.wav
    in audio/, and meta/esc50.csv (filename, fold, target, category, esc10, src_file, take)."""
    root = tmp_path_factory.mktemp("ESC-50-master")
    (root / "audio").mkdir()
    (root / "meta").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for target, category in enumerate(CLASSES):
        for fold in range(1, FOLDS + 1):
            for take in "AB":
                name = f"{fold}-{100 * target + fold}-{take}-{target}.wav"
                write_wav(root / "audio" / name, sound(category, rng.uniform(0.8, 1.5), 16000, 1, rng), 16000)
                rows.append((name, fold, target, category, False, 100 * target + fold, take))
    pd.DataFrame(rows, columns=["filename", "fold", "target", "category", "esc10", "src_file", "take"]).to_csv(
        root / "meta" / "esc50.csv", index=False)
    return root


def test_esc50_layout_reads_the_release_as_it_is(esc50):
    cfg = AudioFolderConfig(layout="esc50", train_folds=(1, 2, 3, 4), test_folds=(5,))
    index = index_audio_folder(esc50, None, cfg)  # default: meta/esc50.csv
    assert len(index) == 30 and index["file"].str.match(r"audio/\d-\d+-[AB]-\d\.wav$").all()
    assert all(Path(p).is_file() for p in index["path"])
    row = index.set_index("file").loc["audio/5-205-B-2.wav"]
    assert (row["label"], row["split"], row["fold"]) == ("beeps", "test", "5")
    assert (index["split"] == "train").sum() == 24
    every = index_audio_folder(esc50, esc50 / "meta/esc50.csv", CFG, every_fold=True)
    assert sorted(every["fold"].unique()) == ["1", "2", "3", "4", "5"] and every["split"].isna().all()
    (esc50 / "meta/broken.csv").write_text("filename,fold,target\na.wav,1,0\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['category'\] \(layout='esc50'"):
        index_audio_folder(esc50, esc50 / "meta/broken.csv", CFG)
    with pytest.raises(ValueError, match=r"evaluation.audio.layout must be one of"):
        AudioFolderConfig(layout="esc-50")


def test_kfold_on_esc50_scores_each_fold_with_a_probe_fitted_on_the_others(esc50):
    model = random_model(ModelConfig.from_dict(TINY_MODEL), seed=0)
    probe = ProbeConfig(top_k=2)
    out = audio_kfold(model, esc50, None, TINY_MEL, CFG, probe, baseline_seed=1)
    json.dumps(out)
    assert out["protocol"] == "audio_linear_kfold" and out["folds"] == ["1", "2", "3", "4", "5"]
    assert out["counts"]["featurised"] == 30 and out["counts"]["per_fold"] == dict.fromkeys(out["folds"], 6)
    assert set(out["models"]) == {"pretrained", "random_init"}
    windows = out["windows_per_file"]
    for streams in out["models"].values():
        assert set(streams) == {"audio_cnn", "audio"}
        for r in streams.values():
            assert [f["fold"] for f in r["per_fold"]] == out["folds"]
            assert (r["clip"]["n"], r["file"]["n"]) == (30 * windows, 30)
            for level in ("clip", "file"):
                m = r[level]
                assert m["top1"] == pytest.approx(np.mean(m["per_fold_top1"]))
                assert m["top1_std"] == pytest.approx(np.std(m["per_fold_top1"], ddof=1))
                assert m["top2"] >= m["top1"] and m["top_k"] == 2
                assert np.sum(m["confusion"]) == m["n"] and m["classes"] == sorted(CLASSES)
                assert np.trace(m["confusion"]) / m["n"] == pytest.approx(m["pooled_top1"])
    # three clearly different sounds: a random CNN separates them (measured: 1.0 at both levels)
    assert out["models"]["pretrained"]["audio_cnn"]["file"]["top1"] >= 0.9
    assert kfold_headline(out)["audio_kfold_top1/random_init/audio/file"] == out["models"]["random_init"]["audio"][
        "file"]["top1"]

    # fold 3 by hand: the probe on the windows of folds 1, 2, 4, 5; file scores = mean softmax of its windows
    index = index_audio_folder(esc50, None, CFG, every_fold=True)
    _, per_window, _, files = audio_window_features(model, index, TINY_MEL, CFG)
    owner = np.repeat(np.arange(len(files)), files["n_windows"].to_numpy())
    labels, folds = files["label"].to_numpy(str), files["fold"].to_numpy(str)
    x, test = per_window["audio_cnn"], folds[owner] == "3"
    scores = probe_scores(fit_probe(x[~test], labels[owner][~test], probe), x[test])
    clip = classification_metrics(scores, labels[owner][test], np.array(sorted(CLASSES)), 2)
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    per_file = np.stack([p[owner[test] == i].mean(0) for i in np.flatnonzero(folds == "3")])
    file = classification_metrics(per_file, labels[folds == "3"], np.array(sorted(CLASSES)), 2)
    fold3 = out["models"]["pretrained"]["audio_cnn"]["per_fold"][2]
    assert fold3["clip"]["top1"] == clip["top1"] and fold3["file"]["top1"] == file["top1"]
    assert fold3["n_train"] == int((~test).sum()) and fold3["n_train_files"] == 24


def test_kfold_errors_name_what_is_wrong(esc50, tmp_path):
    model = random_model(ModelConfig.from_dict(TINY_MODEL), seed=0)
    with pytest.raises(ValueError, match=r"needs at least 2 folds .*got \['1'\]"):
        audio_kfold(model, esc50, None, TINY_MEL, CFG, folds=[1])
    with pytest.raises(ValueError, match=r"not in it: \['9'\]"):
        audio_kfold(model, esc50, None, TINY_MEL, CFG, folds=[1, 9])
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label,split\na.wav,dog,train\n")
    with pytest.raises(ValueError, match="k-fold cross-validation needs a fold column"):
        audio_kfold(model, tmp_path, csv, TINY_MEL, AudioFolderConfig(progress=False))
    with pytest.raises(FileNotFoundError, match="evaluation.audio.root"):
        audio_kfold(model, tmp_path / "nowhere", None, TINY_MEL, CFG)


def test_kfold_on_urbansound8k_folds_1_and_2(tmp_path):
    """Real data, 2-fold cross-validation on 40 UrbanSound8K files (2 per class and fold), the test
    environment's model and log-mel front end."""
    root = shared_data("urbansound8k")
    labels = pd.read_csv(root / "labels.csv")
    subset = labels.groupby(["fold", "label"]).head(2)
    assert len(subset) == 40
    subset.to_csv(tmp_path / "subset.csv", index=False)
    model_cfg = ModelConfig.from_dict(env_params("model"))
    mel = IngestConfig.from_dict(env_params("ingestion")).mel
    cfg = AudioFolderConfig(fold_column="fold", device="cpu", progress=False)
    out = audio_kfold(random_model(model_cfg, seed=1), root, tmp_path / "subset.csv", mel, cfg, baseline_seed=0)
    json.dumps(out)
    assert out["folds"] == ["1", "2"] and out["counts"]["listed"] == 40
    assert out["counts"]["featurised"] + out["counts"]["rejected"] == 40 and out["counts"]["classes"] == 10
    pretrained, baseline = out["models"]["pretrained"], out["models"]["random_init"]
    assert set(pretrained) == set(baseline) == {"audio_cnn", "audio"}
    for stream, r in pretrained.items():
        assert len(r["per_fold"]) == 2 and r["file"]["n"] == out["counts"]["featurised"]
        assert r["file"]["top_k"] == 5 and len(r["per_fold"][0]["clip"]) == 4  # n, top1, top5, chance_top1
        assert sorted(r["file"]["per_class"]) == sorted(labels["label"].unique())
        # the two models are different networks: their probes' scores per fold differ
        ours = [(f["clip"]["top1"], f["clip"]["top5"], f["train_top1"]) for f in r["per_fold"]]
        theirs = [(f["clip"]["top1"], f["clip"]["top5"], f["train_top1"]) for f in baseline[stream]["per_fold"]]
        assert ours != theirs, stream

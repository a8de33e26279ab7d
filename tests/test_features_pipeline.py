"""`kedro run --pipelines features` after training on the demo data: the export of every stream opens
with numpy's memory maps and pandas, one row per video and per clip; `--params model_file=<path>`
exports another model file's features."""

import json

import numpy as np
import pandas as pd

from pemt_pipeline.features.export import FeatureStore
from pemt_pipeline.models import ModelConfig, TrainedModel, load_trained, random_model, save_trained
from tests.conftest import run_kedro

EXPORT = "data/04_feature/exported_features"
MID_STREAMS = ["visual_cnn", "audio_cnn", "visual", "audio", "multimodal_visual", "multimodal_audio"]


def test_features_pipeline_exports_the_model_file_it_is_given(project):
    run_kedro(project, ["demo_data", "ingestion", "embedding", "negatives", "training"], env="test")
    run_kedro(project, ["features"], env="test")
    manifest = pd.read_parquet(project / "data/03_primary/manifest.parquet")
    trained = load_trained(project / "data/06_models/pretrained_model.pt").model
    summary = json.loads((project / "data/08_reporting/features_summary.json").read_text())
    n_clips = int(manifest["n_clips"].sum())
    assert summary["videos"] == len(manifest) == 8 and summary["clips"] == n_clips and summary["fusion"] == "mid"
    assert list(summary["streams"]) == MID_STREAMS

    videos = pd.read_parquet(project / EXPORT / "videos.parquet")
    clips = pd.read_parquet(project / EXPORT / "clips.parquet")
    assert videos["video_id"].tolist() == manifest["video_id"].tolist()  # one row per video, manifest order
    assert videos["label"].tolist() == manifest["label"].tolist() and videos["label"].notna().all()
    assert len(clips) == n_clips and (clips.groupby("video_id", sort=False).size() == videos.set_index("video_id")
                                      ["n_clips"]).all()
    for stream in MID_STREAMS:
        x = np.load(project / EXPORT / "clips" / f"{stream}.npy", mmap_mode="r")
        pooled = np.load(project / EXPORT / "videos" / f"{stream}.npy", mmap_mode="r")
        assert isinstance(x, np.memmap) and x.shape == (n_clips, summary["streams"][stream])
        first = videos.iloc[0]
        np.testing.assert_allclose(pooled[0], x[first.clip_row:first.clip_row + first.n_clips].mean(0),
                                   rtol=1e-5, atol=1e-6)
    store = FeatureStore(project / EXPORT)
    assert ModelConfig.from_dict(store.meta["model"]) == trained.cfg
    trained_features = np.array(store.summary_array("multimodal_visual"))

    # another model file: a randomly initialised late-fusion model
    other = project / "data/06_models/other_model.pt"
    late = ModelConfig.from_dict({**trained.cfg.to_dict(), "fusion": "late"})
    save_trained(TrainedModel(random_model(late, seed=5)), other)
    run_kedro(project, ["features"], {"model_file": str(other)}, env="test")
    store = FeatureStore(project / EXPORT)
    assert store.meta["model"]["fusion"] == "late" and store.streams == MID_STREAMS[:4]
    assert not (project / EXPORT / "summary" / "multimodal_visual.npy").exists()  # the previous export is gone
    assert store.summary_array("visual").shape == (8, trained_features.shape[1])
    assert json.loads((project / "data/08_reporting/features_summary.json").read_text())["fusion"] == "late"

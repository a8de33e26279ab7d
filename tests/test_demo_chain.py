"""Demo data generated, then ingested, through KedroSession (test_training_chain runs the whole default)."""

import numpy as np
import pandas as pd

from pemt_pipeline.media.shards import load_shard
from tests.conftest import run_kedro
from tests.media.test_synthetic import assert_same_media

# The demo videos are the test environment's (conf/test: 8 videos of 3-4 s). On purpose beyond it:
# conf/base's clip configuration, whose shard shapes the first test asserts (8 clips of 8 frames,
# 64 px, 40 x 48 log-mel), where conf/test ingests 4 clips of 4 frames at 32 px.
BASE_CLIPS = {"ingestion": {"fps": 15, "frames_per_clip": 8, "frame_stride": 2, "clips_per_video": 8, "short_side": 64,
                            "n_mels": 40, "mel_frames": 48}}


def test_demo_data_is_generated_and_ingested(project):
    run_kedro(project, ["demo_data", "ingestion"], BASE_CLIPS, env="test")
    labels = pd.read_csv("data/01_raw/demo/labels.csv")
    assert len(labels) == 8 and set(labels["split"]) == {"train", "test"}
    assert all((project / "data/01_raw/demo" / p).is_file() for p in labels["path"])

    manifest = pd.read_parquet("data/03_primary/manifest.parquet")
    rejects = pd.read_parquet("data/03_primary/rejects.parquet")
    assert rejects.empty and len(manifest) == 8
    merged = manifest.merge(labels, left_on="source_path", right_on="path", suffixes=("", "_csv"))
    assert (merged["label"] == merged["label_csv"]).all() and (merged["split"] == merged["split_csv"]).all()
    assert not manifest["silent_audio"].any() and (manifest["audio_channels"] == 2).all()
    for row in manifest.itertuples():
        assert row.duration_s == pytest_approx(labels.set_index("path").loc[row.source_path, "duration_s"])
        shard = load_shard(project / row.shard_path)
        assert shard["frames"].shape == (8, 8, 64, 85, 3)
        assert shard["log_mel"].shape == (8, 40, 48) and np.isfinite(shard["log_mel"]).all()


def pytest_approx(x):
    import pytest

    return pytest.approx(x, abs=1 / 30 + 1e-6)


def test_demo_data_alone_is_deterministic(project):
    run_kedro(project, ["demo_data"], env="test")
    first = {p.name: p.read_bytes() for p in (project / "data/01_raw/demo/videos").iterdir()}
    run_kedro(project, ["demo_data"], {"demo_data": {"n_videos": 4}}, env="test")
    assert len(list((project / "data/01_raw/demo/videos").iterdir())) == 4  # stale files removed
    run_kedro(project, ["demo_data"], env="test")
    again = {p.name: p.read_bytes() for p in (project / "data/01_raw/demo/videos").iterdir()}
    assert sorted(again) == sorted(first)
    for name, data in first.items():
        assert_same_media(data, again[name])

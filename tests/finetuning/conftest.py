"""A small labelled, ingested demo set and a tiny model shared by the fine-tuning tests."""

from __future__ import annotations

import pytest

from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.synthetic import DemoConfig, generate_demo_dataset
from pemt_pipeline.models import ModelConfig
from tests.conftest import env_params

# The test environment's model (conf/test) without dropout, and the test environment's 28 px crops of
# 32 px frames (42 x 32: the 3 test crops sit at different places along the width).
TINY_MODEL = ModelConfig.from_dict(env_params("model", {"transformer": {"dropout": 0.0, "attention_dropout": 0.0}}))
AUGMENT = AugmentConfig(crop=28, short_side_range=(28, 32))


@pytest.fixture(scope="session")
def labelled_demo(tmp_path_factory):
    """8 demo videos (4 classes, 1 train + 1 test video each) ingested as the test environment does
    (4 clips of 4 frames, 32 px, 16 x 8 log-mel): the manifest, with label and split."""
    root = tmp_path_factory.mktemp("labelled_demo")
    files, labels = generate_demo_dataset(DemoConfig(n_videos=8, min_duration_s=3, max_duration_s=4, width=64,
                                                     height=48, test_fraction=0.5))
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    labels[["path", "label", "split"]].to_csv(root / "labels.csv", index=False)
    cfg = IngestConfig(fps=8, frames_per_clip=4, frame_stride=1, clips_per_video=4, short_side=32, n_mels=16,
                       mel_frames=8, shard_dir=str(root / "shards"), workers=1, progress=False)
    manifest, rejects, _ = ingest_all(build_index(VideoSource(root, root / "labels.csv")), cfg)
    assert rejects.empty and len(manifest) == 8
    assert sorted(manifest["split"].value_counts().to_dict().items()) == [("test", 4), ("train", 4)]
    return manifest

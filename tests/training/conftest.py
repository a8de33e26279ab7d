"""A small ingested + embedded demo set shared by the training tests (built once per session)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pemt_pipeline.features import EmbedConfig, embed_clips
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.synthetic import DemoConfig, generate_demo_dataset
from pemt_pipeline.models import ModelConfig
from tests.conftest import env_params

# The test environment's model (conf/test), narrower on purpose (hidden 16, FFN 32, rank 4) and without
# dropout: the tolerances of these tests (DDP, resume) were measured on exactly this model.
TINY_MODEL = env_params("model", {"rank": 4, "transformer": {"hidden": 16, "ffn": 32, "dropout": 0.0,
                                                             "attention_dropout": 0.0}})
TINY_AUGMENT = {"crop": 28, "short_side_range": [28, 32]}


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """8 demo videos ingested small (4 clips of 4 frames, 32 px) with random-init embeddings: the
    manifest and the clip table (negatives are made per test)."""
    root = tmp_path_factory.mktemp("tiny_demo")
    # the demo's earlier scene (one path per video, radius 0.11): the data the DDP test's 2%
    # tolerance was measured on (per-rank BatchNorm statistics differ more on the per-shot motion)
    files, _ = generate_demo_dataset(DemoConfig(n_videos=8, min_duration_s=3, max_duration_s=4, width=64, height=48,
                                                test_fraction=0.0, new_motion_at_cut=False, object_size=0.11))
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    # raw frames: the DDP tolerance was measured on these exact pixels (tests/media/test_shard_codecs.py
    # runs the dataset over every codec)
    cfg = IngestConfig(fps=8, frames_per_clip=4, frame_stride=1, clips_per_video=4, short_side=32, n_mels=16,
                       mel_frames=8, frame_codec="raw", shard_dir=str(root / "shards"), workers=1, progress=False)
    manifest, rejects, _ = ingest_all(build_index(VideoSource(root)), cfg)
    assert rejects.empty and len(manifest) == 8
    manifest["split"] = "train"
    store = embed_clips(manifest, ModelConfig.from_dict(TINY_MODEL),
                        EmbedConfig(crop=28, output_dir=str(root / "emb"), progress=False))
    return manifest, store


def uniform_negatives(clips: pd.DataFrame) -> pd.DataFrame:
    """Every clip of another video, equally likely (a valid negative table without the sampler)."""
    video = clips["video_id"].to_numpy(object)
    a, c = np.nonzero(video[:, None] != video[None, :])
    table = pd.DataFrame({"anchor": a.astype(np.int64), "candidate": c.astype(np.int64)})
    table["probability"] = (1.0 / table.groupby("anchor")["anchor"].transform("size")).astype(np.float32)
    return table

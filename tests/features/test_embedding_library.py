"""The embedding library: transforms, the memory-mapped store, random-init vs checkpoint embedding."""

import numpy as np
import pandas as pd
import pytest
import torch

from pemt_pipeline.features import EmbedConfig, audio_clips, embed_clips, video_clips
from pemt_pipeline.models import load_model, random_model
from pemt_pipeline.features.store import EmbeddingWriter
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.models import ModelConfig
from tests.conftest import env_params
from tests.media.makers import make_video

# The test environment's model (conf/test), narrower on purpose (hidden 16, FFN 32, rank 4): the model
# these tests were written on.
TINY_MODEL = env_params("model", {"rank": 4, "transformer": {"hidden": 16, "ffn": 32}})


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    (root / "videos").mkdir()
    for i, seconds in enumerate([2.0, 3.0, 0.9]):  # the last one is short: padded clips
        make_video(root / "videos" / f"v{i}.mp4", seconds=seconds, fps=10)
    cfg = IngestConfig(fps=10, frames_per_clip=4, frame_stride=1, clips_per_video=3, short_side=32,
                       n_mels=16, mel_frames=8, short_video_policy="pad", shard_dir=str(root / "shards"),
                       workers=1, progress=False)
    manifest, rejects, _ = ingest_all(build_index(VideoSource(root / "videos")), cfg)
    assert rejects.empty
    return manifest


def test_video_clips_crop_and_normalise():
    frames = np.zeros((2, 3, 10, 12, 3), dtype=np.uint8)
    frames[..., 0] = 255  # red
    frames[:, :, 4:6, 5:7, 1] = 255  # a green patch in the centre
    x = video_clips(frames, crop=2)
    assert x.shape == (2, 3, 3, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], torch.full((2, 3, 2, 2), (1 - 0.45) / 0.225))
    torch.testing.assert_close(x[:, 1], torch.full((2, 3, 2, 2), (1 - 0.45) / 0.225))
    torch.testing.assert_close(x[:, 2], torch.full((2, 3, 2, 2), -0.45 / 0.225))
    with pytest.raises(ValueError, match="larger than the stored frames"):
        video_clips(frames, crop=11)
    assert audio_clips(np.zeros((5, 16, 8))).shape == (5, 1, 16, 8)


def test_writer_is_all_or_nothing(tmp_path):
    writer = EmbeddingWriter(tmp_path / "store", 3, {"visual": 2, "audio": 1})
    writer.write({"visual": np.ones((2, 2)), "audio": np.ones((2, 1))})
    with pytest.raises(RuntimeError, match="2 of 3"):
        writer.close(pd.DataFrame({"clip_id": [0, 1, 2]}), {})
    assert not (tmp_path / "store").exists() and list(tmp_path.iterdir()) == []


def test_embed_is_deterministic_and_skips_padding(manifest, tmp_path):
    model_cfg = ModelConfig.from_dict(TINY_MODEL)
    cfg = EmbedConfig(crop=32, batch_size=4, output_dir=str(tmp_path / "a"), progress=False)
    a = embed_clips(manifest, model_cfg, cfg)
    b = embed_clips(manifest, model_cfg,
                    EmbedConfig(crop=32, batch_size=5, output_dir=str(tmp_path / "b"), progress=False))
    clips = a.clips
    assert len(clips) == int(manifest["n_clips"].sum()) == 3 + 3 + 2  # 0.9 s fits two 0.4 s clips: 1 padded
    assert a.visual.shape == (8, model_cfg.visual.out_dim) and a.audio.shape == (8, model_cfg.audio.out_dim)
    assert isinstance(a.visual, np.memmap)
    np.testing.assert_allclose(a.visual, b.visual, rtol=1e-5, atol=1e-6)  # batching does not matter
    np.testing.assert_allclose(a.audio, b.audio, rtol=1e-5, atol=1e-6)
    assert clips["clip_id"].tolist() == list(range(8))
    assert (clips.groupby("video_id")["clip_index"].apply(list).map(len).sort_values().tolist()) == [2, 3, 3]
    other_seed = embed_clips(manifest, model_cfg,
                             EmbedConfig(crop=32, seed=1, output_dir=str(tmp_path / "c"), progress=False))
    assert not np.allclose(a.visual, other_seed.visual)


def test_checkpoint_is_used(manifest, tmp_path):
    model_cfg = ModelConfig.from_dict(TINY_MODEL)
    model = random_model(model_cfg, seed=123)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_config": model_cfg.to_dict()}, path)
    from_ckpt = embed_clips(manifest, model_cfg,
                            EmbedConfig(crop=32, checkpoint=str(path), output_dir=str(tmp_path / "k"), progress=False))
    seeded = embed_clips(manifest, model_cfg,
                         EmbedConfig(crop=32, seed=123, output_dir=str(tmp_path / "s"), progress=False))
    np.testing.assert_allclose(from_ckpt.visual, seeded.visual, rtol=1e-5, atol=1e-6)
    assert from_ckpt.meta["checkpoint"] == str(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt", model_cfg)
    torch.save({"model": {"nope": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path / "bad.pt", model_cfg)


def test_bad_parameters_and_inputs(manifest, tmp_path):
    with pytest.raises(ValueError, match="batchsize"):
        EmbedConfig.from_dict({"batchsize": 3})
    with pytest.raises(ValueError, match="no video"):
        embed_clips(manifest.iloc[:0], ModelConfig.from_dict(TINY_MODEL), EmbedConfig(output_dir=str(tmp_path / "x")))
    broken = manifest.assign(shard_path=manifest["shard_path"] + ".gone")
    with pytest.raises(FileNotFoundError, match="missing"):
        embed_clips(broken, ModelConfig.from_dict(TINY_MODEL), EmbedConfig(output_dir=str(tmp_path / "y")))

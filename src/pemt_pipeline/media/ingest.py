"""Turn videos into clip shards: the library behind the `ingestion` pipeline (no Kedro here).

For each video: check the file, hash its content, skip it if its shard is up to date (same content
hash and same content-affecting parameters), else probe, choose streams (see `decode`), place the
clips (see `clips`), decode once, compute the log-mel of each clip (see `audio`) and write the shard
atomically (see `shards`). Every failure becomes a row of the rejects table with a reason code:

| reason            | meaning |
|-------------------|---------|
| missing_file      | listed in the labels CSV but not on disk |
| is_directory      | a folder named like a media file |
| unreadable        | no permission to read, or an I/O error |
| empty_file        | zero bytes |
| not_media         | FFmpeg cannot open it (random bytes, a text file, a truncated container header) |
| no_video_stream   | audio only (e.g. a WAV) |
| no_audio_stream   | no audio stream (or none decodable) while `missing_audio` is ``reject`` |
| decode_error      | FFmpeg opened the file but no video frame could be decoded |
| truncated         | decoding stopped well before the declared duration (`min_decoded_fraction`) |
| too_short         | shorter than one clip, or than T clips under `short_video_policy: reject` |
| too_long          | longer than `max_duration_s` |
| too_many_pixels   | a frame (declared or decoded) larger than `max_pixels` |
| bad_sample_rate   | every audio stream's rate is outside [`min_sample_rate`, `max_sample_rate`] |
| too_many_channels | every audio stream has more than `max_audio_channels` channels |
| outside_source    | a labelled path or a symbolic link that leads outside `source_dir` |
| timeout           | decoding the file took longer than `file_timeout_s` |
| memory_limit      | the worker decoding it went over `worker_memory_mb` |
| worker_died       | the worker decoding it died (e.g. killed by the out-of-memory killer, a crash in FFmpeg) |
| internal_error    | an unexpected error (a bug): the message says what; the rest of the run goes on |

Silent audio (level below `silence_threshold_db`) is flagged in the manifest, not rejected.

Cost per file is bounded whatever the file: the container's declarations are checked against the
limits before decoding; the video's length is measured from its packets near the declared end (the
whole file is read only when that does not match); only the frames and the audio windows that the
clips use are decoded, seeking past stretches longer than `seek_gap_s`; a jump of the timestamps
by more than `max_timestamp_gap_s` ends the video there (broken timestamps are not hours of video;
`timestamp_gap_s` in the manifest); and each file runs in a supervised worker with a time and a
memory limit. Re-runs compare a cheap fingerprint (size, modification time, sampled bytes) first;
the full content hash is read only after FFmpeg has opened the file, and only when the fingerprint
changed or the video is new.

Object storage (`pemt_pipeline.storage`): the videos and the shard folder may be fsspec URLs. A
remote video's fingerprint is its object version (size and ETag: no byte is read to skip it); when
it must be decoded, its worker downloads it to a temporary file (`_download_dir`), hashes and
decodes that, then deletes it. A shard for a remote folder is built locally and uploaded whole; the
driver records it in the manifest afterwards (the manifest, written last, names only whole shards).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pemt_pipeline import storage
from pemt_pipeline.atomic import WriteError
from pemt_pipeline.configs import between, from_params, one_of, require
from pemt_pipeline.kill_points import KILL_AFTER_SHARDS, kill_at, kill_point
from pemt_pipeline.locking import WAIT_ENV, exclusive, wait_seconds
from pemt_pipeline.media import audio as A
from pemt_pipeline.media import clips as C
from pemt_pipeline.media.decode import (
    Decoded,
    Extent,
    MediaError,
    StreamInfo,
    check_file,
    choose_audio,
    choose_video,
    decode,
    first_frame_time,
    frame_interval,
    open_container,
    probe,
    scan_extent,
    set_decoder_threads,
)
from pemt_pipeline.media.folder import DEFAULT_EXTENSIONS, LabelLayout
from pemt_pipeline.media.clip_codecs import CODECS, H264_PRESETS, ClipCodec
from pemt_pipeline.media.shards import SHARD_SUFFIX, encode_frames, read_metadata, remove_stale_temporaries, write_shard
from pemt_pipeline.media.dask_executor import cluster_threads, dask_client, run_on_dask
from pemt_pipeline.media.workers import TaskFailure, run_supervised

logger = logging.getLogger(__name__)

# Bump when a change to this library changes what a shard holds, so old shards are rebuilt.
INGEST_VERSION = 3
MISSING_AUDIO_POLICIES = ("reject", "silence")
EXECUTORS = ("processes", "dask")  # the local supervised pool | a Dask cluster (media.dask_executor)
REJECT_COLUMNS = ("video_id", "source_path", "reason", "detail")


@dataclass(frozen=True)
class IngestConfig:
    """Ingestion parameters (``ingestion:`` in conf/base/parameters_ingestion.yml documents each)."""

    fps: float = 15.0
    frames_per_clip: int = 8
    frame_stride: int = 2
    clips_per_video: int = 8
    placement: str = "uniform"
    short_video_policy: str = "overlap"
    short_side: int = 64
    sample_rate: int = 16000
    n_mels: int = 40
    mel_frames: int = 48
    n_fft: int = 512
    win_length: int = 400
    f_min: float = 0.0
    f_max: float | None = None
    log_offset: float = 1e-6
    missing_audio: str = "reject"
    silence_threshold_db: float = -60.0
    min_decoded_fraction: float = 0.9
    max_timestamp_gap_s: float = 60.0
    frame_codec: str = "h264"
    h264_crf: int = 17
    h264_preset: str = "veryfast"
    jpeg_quality: int = 90
    # The fields below do not change a shard's content.
    max_pixels: int = 7680 * 4320
    max_duration_s: float = 6 * 3600.0
    min_sample_rate: int = 4000
    max_sample_rate: int = 192000
    max_audio_channels: int = 16
    seek_gap_s: float = 10.0
    file_timeout_s: float = 600.0
    worker_memory_mb: float = 4096.0
    follow_symlinks: bool = False
    shard_dir: str = "data/02_intermediate/shards"
    workers: int = 0
    decoder_threads: int = 1
    extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS
    test_fraction: float = 0.2
    split_seed: int = 0
    layout: str = "auto"  # where labels come from (`media.folder`): these three do not change shards
    ucf101_split: int = 1
    split_lists_dir: str | None = None
    prune_stale_shards: bool = True
    progress: bool = True
    executor: str = "processes"  # where files are ingested: these two do not change shards either
    dask_scheduler: str | None = None

    # Keys of the `ingestion` parameters that the catalog uses (runtime parameters), not this config.
    CATALOG_KEYS = ("source_dir", "labels_csv")
    RUN_FIELDS = ("shard_dir", "workers", "decoder_threads", "extensions", "test_fraction", "split_seed",
                  "prune_stale_shards", "progress", "max_pixels", "max_duration_s", "min_sample_rate",
                  "max_sample_rate", "max_audio_channels", "seek_gap_s", "file_timeout_s", "worker_memory_mb",
                  "follow_symlinks", "layout", "ucf101_split", "split_lists_dir", "executor",
                  "dask_scheduler")

    CODEC_FIELDS = ("frame_codec", "h264_crf", "h264_preset", "jpeg_quality")  # hashed as `codec.settings()`

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> IngestConfig:
        params = dict(params)
        if params.get("extensions") == "default":
            params["extensions"] = DEFAULT_EXTENSIONS
        return from_params(cls, params, "ingestion", ignore=cls.CATALOG_KEYS)

    def validate(self) -> None:
        positive = ("fps", "frames_per_clip", "frame_stride", "clips_per_video", "short_side", "sample_rate",
                    "n_mels", "mel_frames", "n_fft", "win_length", "log_offset")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"ingestion.{name} must be > 0, got {getattr(self, name)!r}")
        choices = {"placement": C.PLACEMENTS, "short_video_policy": C.SHORT_VIDEO_POLICIES,
                   "missing_audio": MISSING_AUDIO_POLICIES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ingestion.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.win_length > self.n_fft:
            raise ValueError(f"ingestion.win_length ({self.win_length}) must be <= n_fft ({self.n_fft})")
        if not 0 <= self.min_decoded_fraction <= 1 or not 0 <= self.test_fraction <= 1:
            raise ValueError("ingestion.min_decoded_fraction and ingestion.test_fraction must be in [0, 1]")
        if self.workers < 0 or self.decoder_threads < 0:
            raise ValueError("ingestion.workers and ingestion.decoder_threads must be >= 0 (0: automatic)")
        at_least_zero = ("max_pixels", "max_duration_s", "file_timeout_s", "worker_memory_mb", "seek_gap_s")
        for name in at_least_zero:
            if getattr(self, name) < 0:
                raise ValueError(f"ingestion.{name} must be >= 0 (0: no limit), got {getattr(self, name)!r}")
        if not 0 < self.max_timestamp_gap_s:
            raise ValueError(f"ingestion.max_timestamp_gap_s must be > 0, got {self.max_timestamp_gap_s!r}")
        if not 0 < self.min_sample_rate <= self.max_sample_rate:
            raise ValueError(f"ingestion.min_sample_rate ({self.min_sample_rate}) must be > 0 and <= "
                             f"ingestion.max_sample_rate ({self.max_sample_rate})")
        if self.max_audio_channels < 1:
            raise ValueError(f"ingestion.max_audio_channels must be >= 1, got {self.max_audio_channels!r}")
        require("ingestion", self, frame_codec=one_of(CODECS), h264_crf=between(0, 51),
                h264_preset=one_of(H264_PRESETS), jpeg_quality=between(1, 100))
        self.label_layout.validate()
        require("ingestion", self, executor=one_of(EXECUTORS))
        if self.dask_scheduler is not None and (self.executor != "dask" or not self.dask_scheduler.strip()):
            raise ValueError("ingestion.dask_scheduler must be a scheduler address (tcp://host:8786) used with "
                             f"ingestion.executor: dask, or null; got {self.dask_scheduler!r} with executor "
                             f"{self.executor!r}")

    @property
    def label_layout(self) -> LabelLayout:
        return LabelLayout(self.layout, self.ucf101_split, self.split_lists_dir)

    @property
    def codec(self) -> ClipCodec:
        return ClipCodec(self.frame_codec, self.h264_crf, self.h264_preset, self.jpeg_quality)

    @property
    def span(self) -> float:
        return C.clip_span(self.frames_per_clip, self.frame_stride, self.fps)

    @property
    def mel(self) -> A.MelConfig:
        return A.MelConfig(self.sample_rate, self.n_mels, self.mel_frames, self.span, self.n_fft, self.win_length,
                           self.f_min, self.f_max, self.log_offset)

    @functools.cached_property
    def params_hash(self) -> str:
        content = {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUN_FIELDS + self.CODEC_FIELDS}
        blob = json.dumps({"version": INGEST_VERSION, "codec": self.codec.settings(), **content}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def shard_path(self, video_id: str) -> Path | str:
        """The shard's path (a URL string when `shard_dir` is a URL)."""
        return storage.join(self.shard_dir, f"{video_id}{SHARD_SUFFIX}")


FINGERPRINT_BLOCK = 1 << 16
FINGERPRINT_SAMPLES = 16


def content_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of the whole file (read only once FFmpeg has accepted the file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike) -> str:
    """A cheap stand-in for the content hash: size, modification time and 16 blocks of 64 KiB spread
    over the file (about 1 MB read whatever the size). Equal fingerprints mean an unchanged file;
    a different one sends the file to the full hash."""
    stat = os.stat(path)
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        span = max(0, stat.st_size - FINGERPRINT_BLOCK)
        for k in range(FINGERPRINT_SAMPLES):
            f.seek(span * k // (FINGERPRINT_SAMPLES - 1))
            digest.update(f.read(FINGERPRINT_BLOCK))
    return digest.hexdigest()[:32]


def _limit_error(cfg: IngestConfig, width: int, height: int, duration: float | None) -> MediaError | None:
    """The first limit that a video's declared frame size or measured duration breaks, if any."""
    if cfg.max_pixels and width * height > cfg.max_pixels:
        return MediaError("too_many_pixels", f"frames of {width}x{height} are over the limit of {cfg.max_pixels} "
                          "pixels (ingestion.max_pixels)")
    if duration is not None and cfg.max_duration_s and duration > cfg.max_duration_s:
        return MediaError("too_long", f"{duration:.1f} s long, over the limit of {cfg.max_duration_s:.0f} s "
                          "(ingestion.max_duration_s)")
    return None


def _audio_limit_error(cfg: IngestConfig, stream: StreamInfo) -> MediaError | None:
    if not cfg.min_sample_rate <= stream.sample_rate <= cfg.max_sample_rate:
        return MediaError("bad_sample_rate",
                          f"audio stream {stream.index} ({stream.codec}) runs at {stream.sample_rate} Hz, "
                          f"outside [{cfg.min_sample_rate}, {cfg.max_sample_rate}] (ingestion.min_sample_rate, "
                          "ingestion.max_sample_rate)")
    if stream.channels > cfg.max_audio_channels:
        return MediaError("too_many_channels", f"audio stream {stream.index} ({stream.codec}) has {stream.channels} "
                          f"channels, over the limit of {cfg.max_audio_channels} (ingestion.max_audio_channels)")
    return None


def _choose_audio_within_limits(streams: list[StreamInfo], cfg: IngestConfig) -> StreamInfo | None:
    """The documented audio choice among the streams within the limits; raises the limit of the best
    stream when every stream breaks one."""
    usable = [s for s in streams if _audio_limit_error(cfg, s) is None]
    if streams and not usable:
        raise _audio_limit_error(cfg, choose_audio(streams))
    return choose_audio(usable)


def _record_limit_error(record: dict[str, Any], cfg: IngestConfig) -> MediaError | None:
    """Limits checked again on a shard that is up to date (they may have been tightened since)."""
    error = _limit_error(cfg, record["width"], record["height"], record["duration_s"])
    if error is None and record.get("audio_rate"):
        stream = StreamInfo(record["audio_stream"], "audio", record["audio_codec"], False,
                            sample_rate=record["audio_rate"], channels=record["audio_channels"])
        error = _audio_limit_error(cfg, stream)
    return error


def _measure_extent(container, video: StreamInfo, t_zero: float, cfg: IngestConfig) -> Extent:
    """The video's length from its packets: the last seconds before the declared end when it is
    declared and they agree with it, else the whole stream (see `decode.scan_extent`)."""
    dt = frame_interval(container.streams[video.index])
    declared = video.declared_duration
    if declared and declared > 0:
        tail = scan_extent(container, video.index, t_zero, max(0.0, declared - 10.0), cfg.max_timestamp_gap_s, dt)
        if tail.gap is None and abs(tail.duration - declared) <= max(0.01 * declared, 1.0):
            return tail
    return scan_extent(container, video.index, t_zero, 0.0, cfg.max_timestamp_gap_s, dt)


def _decode_clips(container, video: StreamInfo, audio: StreamInfo | None, extent: Extent, cfg: IngestConfig):
    """Place clips on the measured extent and decode their frames and audio windows.
    Returns (plan, decoded, frames [T*F, H, W, 3] in clip order)."""
    plan = C.plan_clips(extent.duration, cfg.span, cfg.clips_per_video, cfg.placement, cfg.short_video_policy)
    times = C.frame_times(plan.starts, cfg.frames_per_clip, cfg.frame_stride, cfg.fps).ravel()
    order = np.argsort(times, kind="stable")
    windows = A.clip_audio_windows(plan.starts, cfg.mel) if audio is not None else None
    container.seek(0, stream=container.streams[video.index], backward=True)  # back from measuring
    decoded = decode(container, video.index, audio and audio.index, times[order], cfg.short_side, cfg.decoder_threads,
                     audio_windows=windows, seek_gap_s=cfg.seek_gap_s, end_s=extent.duration,
                     max_gap_s=cfg.max_timestamp_gap_s, max_pixels=cfg.max_pixels, resample_to=cfg.sample_rate)
    if decoded.frames is None:
        return plan, decoded, None
    frames = np.empty_like(decoded.frames)
    frames[order] = decoded.frames
    source_times = np.empty_like(decoded.frame_source_times)
    source_times[order] = decoded.frame_source_times
    decoded.frame_source_times = source_times
    return plan, decoded, frames


def _worst_lag(plan: C.ClipPlan, decoded: Decoded, cfg: IngestConfig) -> float:
    """How far (seconds) before its target instant the frame used for it lies, at worst."""
    times = C.frame_times(plan.starts, cfg.frames_per_clip, cfg.frame_stride, cfg.fps).ravel()
    return float(np.max(times - decoded.frame_source_times)) if decoded.frame_source_times.size else 0.0


def _ingest_media(path: Path, cfg: IngestConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decode one file into shard tensors and the media part of its manifest row (raises MediaError)."""
    with open_container(path) as container:
        info = probe(container)
        video = choose_video(info.video)
        if video is None:
            what = f"; it has audio ({info.audio[0].codec}, {info.audio[0].sample_rate} Hz)" if info.audio else ""
            raise MediaError("no_video_stream", f"no video stream{what}")
        if (error := _limit_error(cfg, video.width, video.height, None)) is not None:
            raise error
        audio = _choose_audio_within_limits(info.audio, cfg)
        if audio is None and cfg.missing_audio == "reject":
            raise MediaError("no_audio_stream", "no audio stream (set ingestion.missing_audio: silence to keep it)")
        set_decoder_threads(container, video.index, cfg.decoder_threads)
        t_zero = first_frame_time(container, video.index)
        if t_zero is None:
            raise MediaError("decode_error", "no video frame could be decoded")
        extent = _measure_extent(container, video, t_zero, cfg)
        declared = video.declared_duration
        if extent.gap is None and declared and extent.duration < cfg.min_decoded_fraction * declared:
            raise MediaError("truncated", f"the video's packets end at {extent.duration:.2f} s of a declared "
                             f"{declared:.2f} s")
        if (error := _limit_error(cfg, video.width, video.height, extent.duration)) is not None:
            raise error
        try:
            plan, decoded, frames = _decode_clips(container, video, audio, extent, cfg)
            lag = _worst_lag(plan, decoded, cfg) if frames is not None else 0.0
            if (lag > cfg.max_timestamp_gap_s or decoded.timestamp_gap) and extent.scanned_from > 0:
                # A hole inside the video that its end did not show: measure the whole stream, place again.
                extent = scan_extent(container, video.index, t_zero, 0.0, cfg.max_timestamp_gap_s,
                                     frame_interval(container.streams[video.index]))
                plan, decoded, frames = _decode_clips(container, video, audio, extent, cfg)
                lag = _worst_lag(plan, decoded, cfg) if frames is not None else 0.0
        except C.ClipPlacementError as exc:
            raise MediaError("too_short", str(exc)) from None
        if decoded.n_video_frames == 0 or frames is None:
            raise MediaError("decode_error", decoded.decode_error or "no video frame could be decoded")
        if decoded.decode_error and lag > max(1.0, 2 * cfg.frame_stride / cfg.fps):
            raise MediaError("truncated", f"decoding failed {lag:.2f} s before a clip's frame "
                             f"({decoded.decode_error})")

    T, F = cfg.clips_per_video, cfg.frames_per_clip
    frames = frames.reshape(T, F, *frames.shape[1:])
    frames[~plan.mask] = 0
    mel = cfg.mel
    collector = decoded.audio if audio is not None and decoded.audio is not None and decoded.audio.written else None
    audio_error = decoded.audio_error
    if audio is not None and collector is None:
        audio_error = audio_error or f"audio stream {audio.index} ({audio.codec}) has no decodable samples"
        if cfg.missing_audio != "silence":
            raise MediaError("no_audio_stream", f"{audio_error} (set ingestion.missing_audio: silence to keep the "
                             "video with a silent track)")
    windows = A.clip_windows_from(collector, plan.starts, mel)
    log_mel = A.log_mel(windows, mel)
    log_mel[~plan.mask] = np.log(mel.log_offset)
    level = A.rms_dbfs(windows[plan.mask])
    last_end = float(plan.starts[plan.mask][-1] + cfg.span)
    audio_end = collector.end / collector.rate if collector is not None else 0.0
    went_through = decoded.seeks == 0
    record = {
        "container": info.format_name,
        "duration_s": round(extent.duration, 6),
        "fps": round(decoded.n_video_frames / decoded.video_duration if went_through else video.fps, 6),
        "declared_fps": round(video.fps, 6),
        "width": video.height if decoded.rotation in (90, 270) else video.width,
        "height": video.width if decoded.rotation in (90, 270) else video.height,
        "rotation": decoded.rotation,
        "video_codec": video.codec,
        "video_stream": video.index,
        "n_video_streams": len(info.video),
        "audio_codec": audio.codec if audio else None,
        "audio_stream": audio.index if audio else None,
        "n_audio_streams": len(info.audio),
        "audio_rate": audio.sample_rate if audio else None,
        "audio_channels": audio.channels if audio else None,
        "audio_duration_s": round(audio_end, 6),
        "audio_level_db": round(level, 2) if np.isfinite(level) else None,
        "n_clips": plan.n_real,
        "silent_audio": bool(level < cfg.silence_threshold_db),
        "audio_synthesized": collector is None,
        "audio_error": audio_error,
        "clips_overlap": plan.overlapping,
        "clips_padded": bool(plan.n_real < T),
        "frames_held": int(decoded.held_targets),
        "audio_padded": bool(collector is not None and audio_end < last_end - 1.0 / cfg.fps),
        "timestamp_warnings": len(decoded.warnings),
        "timestamp_gap_s": round(extent.gap[1] - extent.gap[0], 3) if extent.gap else None,
        "decode_seeks": decoded.seeks,
        "decode_warning": decoded.decode_error,
    }
    tensors = {
        "frames": frames,
        "log_mel": log_mel.astype(np.float32),
        "clip_start": plan.starts.astype(np.float64),
        "frame_time": decoded.frame_source_times.reshape(T, F).astype(np.float64),
        "clip_mask": plan.mask,
    }
    return tensors, record


def _download_dir(cfg: IngestConfig) -> Path:
    """Where the workers of an ingestion into `cfg.shard_dir` download remote videos (one folder
    per shard folder, under the read cache: the shard folder's lock makes it this run's alone)."""
    key = hashlib.sha256(str(cfg.shard_dir).encode()).hexdigest()[:16]
    return storage.cache_config().root / "downloads" / key


def _object_stamp(url: str) -> str:
    """The fingerprint of a remote video, from its metadata (one request; no byte read): raises
    the MediaError of a missing, unreadable, folder-like or empty object."""
    try:
        description = storage.info(url)
    except FileNotFoundError:
        raise MediaError("missing_file", "listed in the labels but not in the object store") from None
    except PermissionError:
        raise MediaError("unreadable", f"permission denied (check the credentials entry {storage.CREDENTIALS_KEY!r})") \
            from None
    except OSError as exc:
        raise MediaError("unreadable", f"its metadata cannot be read ({type(exc).__name__})") from None
    if description.get("type") == "directory":
        raise MediaError("is_directory", "a folder named like a media file")
    if not description.get("size"):
        raise MediaError("empty_file", "zero bytes")
    return "object:" + storage.version(description)


def _download(url: str, cfg: IngestConfig) -> Path:
    """A remote video downloaded to a temporary file of `_download_dir` (the caller deletes it; a
    killed worker's is deleted by the next run); a failed download is the video's `unreadable`."""
    try:
        return storage.download(url, _download_dir(cfg))
    except WriteError:
        raise
    except OSError as exc:
        raise MediaError("unreadable", f"the download failed ({exc.strerror or type(exc).__name__})") from None


def _reject(row: dict[str, Any], code: str, detail: str) -> tuple[str, dict[str, Any]]:
    return "rejected", {"video_id": row["video_id"], "source_path": row["source_path"], "reason": code,
                        "detail": detail}


def _skip_if_current(meta: dict[str, str] | None, labels: dict[str, Any], cfg: IngestConfig):
    record = {**json.loads(meta["record"]), **labels}
    if (error := _record_limit_error(record, cfg)) is not None:
        raise error
    return "skipped", record


def ingest_video(row: dict[str, Any], cfg: IngestConfig) -> tuple[str, dict[str, Any]]:
    """Ingest one video of the index. Returns ("accepted" | "skipped", manifest row) or ("rejected", reject row).
    A remote video (a URL) is downloaded to a temporary file only when it must be hashed or decoded."""
    vid, path = row["video_id"], row.get("path") or None
    remote = storage.is_url(path)
    path = path if remote or path is None else Path(path)
    labels = {"video_id": vid, "source_path": row["source_path"], "label": row.get("label"), "split": row.get("split")}
    local = path
    try:
        if row.get("reject_reason"):
            return _reject(row, row["reject_reason"], row.get("reject_detail") or "")
        if not remote:
            check_file(path)
        shard = cfg.shard_path(vid)
        meta = read_metadata(shard)
        current = meta is not None and meta.get("params_hash") == cfg.params_hash
        stamp = _object_stamp(path) if remote else fingerprint(path)
        if current and meta.get("fingerprint") == stamp:
            return _skip_if_current(meta, labels, cfg)
        local = _download(path, cfg) if remote else path
        try:
            digest = None
            if current:  # touched, or changed: FFmpeg looks at it first, then the contents decide
                open_container(local).close()
                digest = content_hash(local)
                if digest == meta.get("content_hash"):
                    return _skip_if_current(meta, labels, cfg)
            tensors, media = _ingest_media(local, cfg)
            digest = digest or content_hash(local)  # a changed file is read in full once, not twice
        finally:
            if remote:
                local.unlink(missing_ok=True)
        record = {**labels, "content_hash": digest, **media, "clips_per_video": cfg.clips_per_video,
                  "shard_path": shard if isinstance(shard, str) else shard.as_posix(), "params_hash": cfg.params_hash}
        frame_shape = tensors["frames"].shape[:4]
        stored = encode_frames(tensors, cfg.codec)
        record["frame_codec"] = cfg.frame_codec
        frame_tensors = ("frames", "frame_data", "frame_offsets")
        record["frame_bytes"] = int(sum(stored[k].nbytes for k in frame_tensors if k in stored))
        record["shard_bytes"] = int(sum(t.nbytes for t in stored.values()))
        write_shard(shard, stored, {"video_id": vid, "content_hash": digest, "fingerprint": stamp,
                                    "params_hash": cfg.params_hash, "record": json.dumps(record)},
                    codec=cfg.codec, frame_shape=frame_shape)
        return "accepted", record
    except MediaError as exc:
        # a downloaded video's detail names the object, not the temporary file
        detail = exc.detail.replace(str(local), storage.redact(path)) if remote else exc.detail
        return _reject(row, exc.code, detail)
    except WriteError as exc:  # a full disk is not the video's fault: the run stops (see _ingest_rows)
        return "write_error", {"error": exc}
    except Exception as exc:  # noqa: BLE001 - one bad video must not stop the run
        logger.debug("internal error on %s:\n%s", path, traceback.format_exc())
        return _reject(row, "internal_error", f"{type(exc).__name__}: {exc}")


def _init_worker() -> None:
    """Per-video tensors are small: torch's thread pool only adds overhead (and workers already run
    one per core)."""
    torch.set_num_threads(1)


def _ingest_rows(index: pd.DataFrame, cfg: IngestConfig) -> list[tuple[str, dict]]:
    """`ingest_video` over the index's rows in supervised workers (local processes, or subprocesses of
    Dask workers with `executor: dask`), longest file first."""
    remove_stale_temporaries(cfg.shard_dir)
    rows = index.to_dict("records")
    rows.sort(key=lambda r: os.path.getsize(r["path"]) if r.get("path") and os.path.isfile(r["path"]) else 0,
              reverse=True)  # so that no worker is left with a long video at the end
    task = functools.partial(ingest_video, cfg=cfg)
    limits = {"timeout_s": cfg.file_timeout_s, "memory_limit_mb": cfg.worker_memory_mb, "initializer": _init_worker}
    results: list[tuple[str, dict]] = []
    kill_after, written = kill_point(KILL_AFTER_SHARDS), 0  # test-only (pemt_pipeline.kill_points)
    workers = _worker_count(cfg, len(rows))  # local processes, or a local cluster's Dask workers
    with contextlib.ExitStack() as stack:
        if cfg.executor == "dask":  # batches of files in supervised subprocesses of the Dask workers
            client = stack.enter_context(dask_client(cfg.dask_scheduler, workers, "ingestion.dask_scheduler"))
            threads = cluster_threads(client)
            where = f"dask, {threads} thread{'s' if threads > 1 else ''}"
            seen = [cfg.shard_dir, *(r["path"] for r in rows[:1] if r.get("path"))]  # every worker must see
            run = run_on_dask(client, task, rows, shared_paths=seen, **limits)
        else:
            where = f"{workers} worker{'s' if workers > 1 else ''}"
            run = run_supervised(task, rows, workers, **limits)
        stack.enter_context(contextlib.closing(run))
        logger.info("ingesting %d file(s) into %s (%s)", len(rows), storage.redact(cfg.shard_dir), where)
        bar = stack.enter_context(tqdm(total=len(rows), desc=f"ingesting ({where})", unit="video",
                                       disable=not cfg.progress))
        for i, result in run:
            if isinstance(result, TaskFailure):
                result = _failure_reject(rows[i], result)
            elif result[0] == "write_error":
                raise result[1]["error"]
            results.append(result)
            bar.update()
            written += result[0] == "accepted"
            kill_at(kill_after, written, process_group=True)
    return results


def _worker_count(cfg: IngestConfig, n_videos: int) -> int:
    workers = cfg.workers or len(os.sched_getaffinity(0))
    return max(1, min(workers, n_videos))


_LIMIT_PARAMETER = {"timeout": "ingestion.file_timeout_s", "memory_limit": "ingestion.worker_memory_mb"}


def _failure_reject(row: dict[str, Any], failure: TaskFailure) -> tuple[str, dict[str, Any]]:
    where = _LIMIT_PARAMETER.get(failure.reason)
    return _reject(row, failure.reason, f"{failure.detail} ({where})" if where else failure.detail)


def ingest_all(index: pd.DataFrame, cfg: IngestConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Ingest every video of `index` (from `folder.build_index`), in parallel over videos.

    Each video runs in a supervised worker (`workers.run_supervised`): one that dies, overruns
    `file_timeout_s` or goes over `worker_memory_mb` is a rejects row, and a fresh worker goes on.
    Returns the manifest (one row per accepted video, sorted by video_id), the rejects table and
    counts of accepted (newly written), skipped (shard up to date) and rejected videos.
    """
    if index.empty:
        raise ValueError("no media files to ingest: the video index is empty")
    storage.refuse_userinfo(cfg.shard_dir, "ingestion.shard_dir")
    remote = storage.is_url(cfg.shard_dir)
    shard_dir = cfg.shard_dir if remote else Path(cfg.shard_dir)
    storage.makedirs(shard_dir)
    downloads = _download_dir(cfg)
    # One ingestion at a time per shard folder: a second run waits (PEMT_LOCK_WAIT_S) or stops, so
    # that no run prunes the shards another is writing (a remote folder: per machine, a lock file
    # beside the downloads folder).
    lock = downloads.with_name(downloads.name + ".lock") if remote else shard_dir.with_name(shard_dir.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(lock, f"the shard folder {storage.redact(shard_dir)!r}",
                   wait_seconds(), hint=f"set {WAIT_ENV}=<seconds> to wait for it"):
        shutil.rmtree(downloads, ignore_errors=True)  # what killed workers of an earlier run left
        try:
            results = _ingest_rows(index, cfg)
        finally:
            shutil.rmtree(downloads, ignore_errors=True)
        for status, rec in results:
            if status == "rejected":
                logger.warning("rejected %s: %s (%s)", rec["source_path"], rec["reason"], rec["detail"])
        accepted = [rec for status, rec in results if status != "rejected"]
        manifest = pd.DataFrame(accepted).sort_values("video_id", ignore_index=True) if accepted else pd.DataFrame()
        rejects = pd.DataFrame([rec for status, rec in results if status == "rejected"], columns=list(REJECT_COLUMNS))
        rejects = rejects.sort_values("source_path", ignore_index=True)
        if cfg.prune_stale_shards:
            keep = {f"{v}{SHARD_SUFFIX}" for v in manifest.get("video_id", [])}
            if remote:  # one listing, then a delete per stale shard
                for name in storage.listing(shard_dir, SHARD_SUFFIX):
                    if name not in keep:
                        storage.remove(storage.join(shard_dir, name))
            for shard in ([] if remote else shard_dir.glob(f"*{SHARD_SUFFIX}")):
                if shard.name not in keep:
                    shard.unlink()
    counts = {s: sum(1 for status, _ in results if status == s) for s in ("accepted", "skipped", "rejected")}
    logger.info("ingestion: %(accepted)d written, %(skipped)d up to date, %(rejected)d rejected", counts)
    return manifest, rejects, counts

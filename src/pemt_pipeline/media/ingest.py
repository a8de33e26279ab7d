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
| internal_error    | an unexpected error (a bug): the message says what; the rest of the run goes on |

Silent audio (level below `silence_threshold_db`) is flagged in the manifest, not rejected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pemt_pipeline.configs import from_params
from pemt_pipeline.media import audio as A
from pemt_pipeline.media import clips as C
from pemt_pipeline.media.decode import (
    MediaError,
    check_file,
    choose_audio,
    choose_video,
    decode,
    open_container,
    probe,
)
from pemt_pipeline.media.folder import DEFAULT_EXTENSIONS
from pemt_pipeline.media.shards import SHARD_SUFFIX, read_metadata, remove_stale_temporaries, write_shard

logger = logging.getLogger(__name__)

# Bump when a change to this library changes what a shard holds, so old shards are rebuilt.
INGEST_VERSION = 1
MISSING_AUDIO_POLICIES = ("reject", "silence")
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
    # The fields below do not change a shard's content.
    shard_dir: str = "data/02_intermediate/shards"
    workers: int = 0
    decoder_threads: int = 1
    extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS
    test_fraction: float = 0.2
    split_seed: int = 0
    prune_stale_shards: bool = True
    progress: bool = True

    # Keys of the `ingestion` parameters that the catalog uses (runtime parameters), not this config.
    CATALOG_KEYS = ("source_dir", "labels_csv")
    RUN_FIELDS = ("shard_dir", "workers", "decoder_threads", "extensions", "test_fraction", "split_seed",
                  "prune_stale_shards", "progress")

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> IngestConfig:
        params = dict(params)
        if params.get("extensions") == "default":
            params["extensions"] = DEFAULT_EXTENSIONS
        cfg = from_params(cls, params, "ingestion", ignore=cls.CATALOG_KEYS)
        cfg.validate()
        return cfg

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

    @property
    def span(self) -> float:
        return C.clip_span(self.frames_per_clip, self.frame_stride, self.fps)

    @property
    def mel(self) -> A.MelConfig:
        return A.MelConfig(self.sample_rate, self.n_mels, self.mel_frames, self.span, self.n_fft, self.win_length,
                           self.f_min, self.f_max, self.log_offset)

    @functools.cached_property
    def params_hash(self) -> str:
        content = {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUN_FIELDS}
        blob = json.dumps({"version": INGEST_VERSION, **content}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def shard_path(self, video_id: str) -> Path:
        return Path(self.shard_dir) / f"{video_id}{SHARD_SUFFIX}"


def content_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _up_to_date_record(shard: Path, digest: str, cfg: IngestConfig) -> dict | None:
    meta = read_metadata(shard)
    if meta and meta.get("content_hash") == digest and meta.get("params_hash") == cfg.params_hash:
        return json.loads(meta["record"])
    return None


def _decode_clips(source, video_index: int, audio_index: int | None, duration: float, cfg: IngestConfig):
    """Place clips for `duration` and decode their frames; returns (plan, decoded, frames [T*F, H, W, 3])."""
    plan = C.plan_clips(duration, cfg.span, cfg.clips_per_video, cfg.placement, cfg.short_video_policy)
    times = C.frame_times(plan.starts, cfg.frames_per_clip, cfg.frame_stride, cfg.fps).ravel()
    order = np.argsort(times, kind="stable")
    decoded = decode(source, video_index, audio_index, times[order], cfg.short_side, cfg.decoder_threads)
    if decoded.frames is None:
        return plan, decoded, None
    frames = np.empty_like(decoded.frames)
    frames[order] = decoded.frames
    source_times = np.empty_like(decoded.frame_source_times)
    source_times[order] = decoded.frame_source_times
    decoded.frame_source_times = source_times
    return plan, decoded, frames


def _ingest_media(path: Path, cfg: IngestConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decode one file into shard tensors and the media part of its manifest row (raises MediaError)."""
    with open_container(path) as container:
        info = probe(container)
        video, audio = choose_video(info.video), choose_audio(info.audio)
        if video is None:
            what = f"; it has audio ({audio.codec}, {audio.sample_rate} Hz)" if audio else ""
            raise MediaError("no_video_stream", f"no video stream{what}")
        if audio is None and cfg.missing_audio == "reject":
            raise MediaError("no_audio_stream", "no audio stream (set ingestion.missing_audio: silence to keep it)")
        audio_index = audio and audio.index
        declared = video.declared_duration
        duration = declared
        if not duration or duration <= 0:  # unknown: measure with a first pass that converts no frame
            duration = decode(container, video.index, None, None, cfg.short_side, cfg.decoder_threads).video_duration
            container = path  # the next pass opens the file again
        try:
            plan, decoded, frames = _decode_clips(container, video.index, audio_index, duration, cfg)
            if decoded.n_video_frames == 0:
                raise MediaError("decode_error", decoded.decode_error or "no video frame could be decoded")
            actual = decoded.video_duration
            if declared and actual < cfg.min_decoded_fraction * declared:
                why = f" ({decoded.decode_error})" if decoded.decode_error else ""
                raise MediaError("truncated", f"decoded {actual:.2f} s of a declared {declared:.2f} s{why}")
            if abs(actual - duration) > max(0.01 * actual, 1.5 / cfg.fps):  # metadata was wrong: place again
                plan, decoded, frames = _decode_clips(path, video.index, audio_index, actual, cfg)
        except C.ClipPlacementError as exc:
            raise MediaError("too_short", str(exc)) from None

    T, F = cfg.clips_per_video, cfg.frames_per_clip
    frames = frames.reshape(T, F, *frames.shape[1:])
    frames[~plan.mask] = 0
    mel = cfg.mel
    if decoded.audio is not None and decoded.audio.size:
        track = A.resample(decoded.audio, decoded.audio_rate, mel.sample_rate)
    elif cfg.missing_audio == "silence":
        track = np.zeros(0, dtype=np.float32)
    else:
        raise MediaError("no_audio_stream", f"audio stream {audio.index} ({audio.codec}) has no decodable samples")
    windows = A.clip_windows(track, plan.starts, mel)
    log_mel = A.log_mel(windows, mel)
    log_mel[~plan.mask] = np.log(mel.log_offset)
    level = A.rms_dbfs(windows[plan.mask])
    last_end = float(plan.starts[plan.mask][-1] + cfg.span)
    record = {
        "container": info.format_name,
        "duration_s": round(decoded.video_duration, 6),
        "fps": round(decoded.n_video_frames / decoded.video_duration, 6),
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
        "audio_duration_s": round(len(track) / mel.sample_rate, 6),
        "audio_level_db": round(level, 2) if np.isfinite(level) else None,
        "n_clips": plan.n_real,
        "silent_audio": bool(level < cfg.silence_threshold_db),
        "audio_synthesized": audio is None,
        "clips_overlap": plan.overlapping,
        "clips_padded": bool(plan.n_real < T),
        "frames_held": int(decoded.held_targets),
        "audio_padded": bool(len(track) / mel.sample_rate < last_end - 1.0 / cfg.fps),
        "timestamp_warnings": len(decoded.warnings),
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


def ingest_video(row: dict[str, Any], cfg: IngestConfig) -> tuple[str, dict[str, Any]]:
    """Ingest one video of the index. Returns ("accepted" | "skipped", manifest row) or ("rejected", reject row)."""
    vid, path = row["video_id"], Path(row["path"])
    labels = {"video_id": vid, "source_path": row["source_path"], "label": row.get("label"), "split": row.get("split")}
    try:
        check_file(path)
        digest = content_hash(path)
        shard = cfg.shard_path(vid)
        record = _up_to_date_record(shard, digest, cfg)
        if record is not None:
            return "skipped", {**record, **labels}
        tensors, media = _ingest_media(path, cfg)
        record = {**labels, "content_hash": digest, **media, "clips_per_video": cfg.clips_per_video,
                  "shard_path": shard.as_posix(), "params_hash": cfg.params_hash}
        record["shard_bytes"] = int(sum(t.nbytes for t in tensors.values()))
        write_shard(shard, tensors, {"video_id": vid, "content_hash": digest, "params_hash": cfg.params_hash,
                                     "record": json.dumps(record)})
        return "accepted", record
    except MediaError as exc:
        return "rejected", {"video_id": vid, "source_path": row["source_path"], "reason": exc.code, "detail": exc.detail}
    except Exception as exc:  # noqa: BLE001 - one bad video must not stop the run
        logger.debug("internal error on %s:\n%s", path, traceback.format_exc())
        return "rejected", {"video_id": vid, "source_path": row["source_path"], "reason": "internal_error",
                            "detail": f"{type(exc).__name__}: {exc}"}


@contextlib.contextmanager
def _one_torch_thread():
    """Per-video tensors are small: torch's thread pool only adds overhead (and workers already run
    one per core), so ingestion runs torch on one thread, then restores the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_worker() -> None:
    torch.set_num_threads(1)


def _worker_count(cfg: IngestConfig, n_videos: int) -> int:
    workers = cfg.workers or len(os.sched_getaffinity(0))
    return max(1, min(workers, n_videos))


def ingest_all(index: pd.DataFrame, cfg: IngestConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Ingest every video of `index` (from `folder.build_index`), in parallel over videos.

    Returns the manifest (one row per accepted video, sorted by video_id), the rejects table and
    counts of accepted (newly written), skipped (shard up to date) and rejected videos.
    """
    if index.empty:
        raise ValueError("no media files to ingest: the video folder has none (check ingestion.source_dir)")
    Path(cfg.shard_dir).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cfg.shard_dir)
    rows = index.to_dict("records")
    # Longest first (by file size), so that no worker is left with a long video at the end.
    rows.sort(key=lambda r: os.path.getsize(r["path"]) if os.path.isfile(r["path"]) else 0, reverse=True)
    workers = _worker_count(cfg, len(rows))
    results: list[tuple[str, dict]] = []
    bar = tqdm(total=len(rows), desc=f"ingesting ({workers} worker{'s' if workers > 1 else ''})", unit="video",
               disable=not cfg.progress)
    if workers == 1:
        with _one_torch_thread():
            for row in rows:
                results.append(ingest_video(row, cfg))
                bar.update()
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            for future in as_completed([pool.submit(ingest_video, row, cfg) for row in rows]):
                results.append(future.result())
                bar.update()
    bar.close()

    for status, rec in results:
        if status == "rejected":
            logger.warning("rejected %s: %s (%s)", rec["source_path"], rec["reason"], rec["detail"])
    accepted = [rec for status, rec in results if status != "rejected"]
    manifest = pd.DataFrame(accepted).sort_values("video_id", ignore_index=True) if accepted else pd.DataFrame()
    rejects = pd.DataFrame([rec for status, rec in results if status == "rejected"], columns=list(REJECT_COLUMNS))
    rejects = rejects.sort_values("source_path", ignore_index=True)
    if cfg.prune_stale_shards:
        keep = {f"{v}{SHARD_SUFFIX}" for v in manifest.get("video_id", [])}
        for shard in Path(cfg.shard_dir).glob(f"*{SHARD_SUFFIX}"):
            if shard.name not in keep:
                shard.unlink()
    counts = {s: sum(1 for status, _ in results if status == s) for s in ("accepted", "skipped", "rejected")}
    logger.info("ingestion: %(accepted)d written, %(skipped)d up to date, %(rejected)d rejected", counts)
    return manifest, rejects, counts

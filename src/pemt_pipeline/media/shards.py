"""Clip shards: one safetensors file per video (no pickle, lazily readable, memory-mappable).

Tensors in a shard (T clips, F frames per clip):
- ``frames``      uint8   [T, F, H, W, 3]  RGB, upright, short side resized
- ``log_mel``     float32 [T, n_mels, mel_frames]
- ``clip_start``  float64 [T]     clip start, seconds from the first video frame
- ``frame_time``  float64 [T, F]  timestamp of the source frame used for each sampled frame
- ``clip_mask``   bool    [T]     True for real clips, False for padding
Metadata (strings): ``format`` (SHARD_FORMAT), ``video_id``, ``content_hash``, ``params_hash`` and
``record`` (the video's manifest row as JSON), so a shard is self-describing and a resumed
ingestion can rebuild its manifest row without decoding again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from pemt_pipeline.atomic import atomic_path, remove_stale_temporaries  # noqa: F401 - the latter for ingest

SHARD_FORMAT = "pemt-shard/1"
SHARD_SUFFIX = ".safetensors"
TENSOR_NAMES = ("frames", "log_mel", "clip_start", "frame_time", "clip_mask")


def write_shard(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> int:
    """Write atomically (`pemt_pipeline.atomic`: temporary file, fsync, rename). Returns the size in bytes."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                  metadata={"format": SHARD_FORMAT, **metadata})
    return path.stat().st_size


def read_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The shard's metadata, or None if the file is missing or not a readable shard."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - OSError, or safetensors' own SafetensorError on a bad header
        return None
    return meta if meta.get("format") == SHARD_FORMAT else None


def read_record(path: str | os.PathLike) -> dict | None:
    meta = read_metadata(path)
    return None if meta is None else json.loads(meta["record"])


def load_shard(path: str | os.PathLike, names: tuple[str, ...] = TENSOR_NAMES, clips: slice | None = None) -> dict[str, np.ndarray]:
    """Read some tensors of a shard (optionally only some clips) without reading the rest."""
    out = {}
    with safe_open(str(path), framework="numpy") as f:
        for name in names:
            out[name] = f.get_slice(name)[clips] if clips is not None else f.get_tensor(name)
    return out


class ShardStore:
    """A folder of clip shards, read lazily (what the `clip_shards` catalog entry loads)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ShardStore({str(self.root)!r}, {len(self.video_ids())} shards)"

    def path(self, video_id: str) -> Path:
        return self.root / f"{video_id}{SHARD_SUFFIX}"

    def video_ids(self) -> list[str]:
        return sorted(p.name[: -len(SHARD_SUFFIX)] for p in self.root.glob(f"*{SHARD_SUFFIX}"))

    def load(self, video_id: str, names: tuple[str, ...] = TENSOR_NAMES) -> dict[str, np.ndarray]:
        return load_shard(self.path(video_id), names)

    def record(self, video_id: str) -> dict | None:
        return read_record(self.path(video_id))

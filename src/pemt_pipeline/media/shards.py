"""Clip shards: one safetensors file per video (no pickle, lazily readable, memory-mappable), and
their one reader, `ShardReader`, which decodes frames on access.

Tensors in a shard (T clips, F frames per clip):
- the frames, by codec (metadata ``codec``, see `clip_codecs`):
  ``raw``:          ``frames`` uint8 [T, F, H, W, 3]  RGB, upright, short side resized
  ``h264``/``jpeg``: ``frame_data`` uint8 [N] every clip's packets one after the other, and
                    ``frame_offsets`` int64 [T * F + 1] where each frame's packet starts
- ``log_mel``     float32 [T, n_mels, mel_frames]
- ``clip_start``  float64 [T]     clip start, seconds from the first video frame
- ``frame_time``  float64 [T, F]  timestamp of the source frame used for each sampled frame
- ``clip_mask``   bool    [T]     True for real clips, False for padding
Metadata (strings): ``format``, ``codec`` (JSON: name and settings), ``frame_shape`` (JSON
[T, F, H, W]), ``video_id``, ``content_hash``, ``params_hash`` and ``record`` (the video's
manifest row as JSON), so a shard is self-describing and a resumed ingestion can rebuild its
manifest row without decoding again. Reading clip t reads only its own bytes (safetensors slices a
memory map). Shards of format ``pemt-shard/1`` (raw frames, before codecs) still load.

A shard path may be an fsspec URL (`pemt_pipeline.storage`): a shard is then built in a local
temporary file and uploaded whole; its metadata is read with ranged requests (the header only); a
reader opens the local copy of the bounded read cache (`storage.local_copy`).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from pemt_pipeline import storage
from pemt_pipeline.atomic import remove_stale_temporaries  # noqa: F401 - for ingest
from pemt_pipeline.media.clip_codecs import CODECS, ClipCodec, decode_clip, decode_jpeg_on

SHARD_FORMAT = "pemt-shard/2"
READABLE_FORMATS = ("pemt-shard/1", SHARD_FORMAT)
SHARD_SUFFIX = ".safetensors"
TENSOR_NAMES = ("frames", "log_mel", "clip_start", "frame_time", "clip_mask")
RAW = ClipCodec("raw")
HEADER_READ = 1 << 14  # the first request for a remote shard's header (about 2 kB with its record)


class ShardError(ValueError):
    """A file is not a clip shard this code can read (the message says what to do)."""


def encode_frames(tensors: dict[str, np.ndarray], codec: ClipCodec) -> dict[str, np.ndarray]:
    """The tensors as stored: raw ``frames`` replaced by ``frame_data`` / ``frame_offsets`` unless
    the codec is raw."""
    if codec.name == "raw" or "frames" not in tensors:
        return dict(tensors)
    stored = {k: v for k, v in tensors.items() if k != "frames"}
    stored["frame_data"], stored["frame_offsets"] = codec.encode(tensors["frames"])
    return stored


def write_shard(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str],
                codec: ClipCodec = RAW, frame_shape: tuple[int, ...] | None = None) -> int:
    """Write atomically (`pemt_pipeline.atomic`: temporary file, fsync, rename; a URL: built
    locally, then uploaded whole, `storage.writing`); `tensors` hold raw ``frames`` (encoded here with
    `codec`) or the output of `encode_frames` (then give `frame_shape`, [T, F, H, W]). Returns the
    size in bytes."""
    if "frames" in tensors:
        frame_shape = tensors["frames"].shape[:4]
    if frame_shape is None and "frame_data" in tensors:
        raise ValueError("encoded frames need their frame_shape [T, F, H, W]")
    stored = encode_frames(tensors, codec)
    meta = {"format": SHARD_FORMAT, "codec": codec.metadata(), **metadata}
    if frame_shape is not None:
        meta["frame_shape"] = json.dumps([int(n) for n in frame_shape])
    with storage.writing(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in stored.items()}, str(tmp), metadata=meta)
        size = tmp.stat().st_size
    return size


def read_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The shard's metadata, or None if the file is missing or not a readable shard. A remote shard's
    header is read with one ranged request (two for a header over `HEADER_READ`), not the file."""
    try:
        if storage.is_url(path):
            meta = _remote_metadata(str(path))
        else:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - OSError, or safetensors' own SafetensorError on a bad header
        return None
    return meta if meta.get("format") in READABLE_FORMATS else None


def _remote_metadata(url: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (u64 little-endian length, then JSON) read remotely."""
    head = storage.read_range(url, 0, HEADER_READ)
    (length,) = struct.unpack("<Q", head[:8])
    if len(head) < 8 + length:
        head = head[:8] + storage.read_range(url, 8, 8 + length)
    return json.loads(head[8:8 + length]).get("__metadata__") or {}


def missing_shards(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The shards of `paths` that do not exist (as text, redacted): local ones checked one by one,
    remote ones by one listing of each folder (no request per shard; the listing also tells the
    read cache each shard's version, so reading one costs no metadata request)."""
    missing, remote = [], {}
    for path in paths:
        if storage.is_url(path):
            folder, _, name = str(path).rpartition("/")
            remote.setdefault(folder, []).append((str(path), name))
        elif not Path(path).is_file():
            missing.append(str(path))
    for folder, shards in remote.items():
        present = storage.listing(folder, SHARD_SUFFIX)
        storage.object_cache().note_listing(folder, present)
        missing += [storage.redact(path) for path, name in shards if name not in present]
    return missing


def read_record(path: str | os.PathLike) -> dict | None:
    meta = read_metadata(path)
    return None if meta is None else json.loads(meta["record"])


class ShardReader:
    """One shard: its metadata is read once; `read` decodes the frames of the clips asked for.

    Cheap to build and to pickle (it holds the path and the metadata, no open file), so datasets
    build one per item in DataLoader workers. A URL is read from its local copy in the bounded read
    cache (`storage.local_copy`; fetched on first use, its version checked once per process).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = path if storage.is_url(path) else Path(path)
        self.name = storage.redact(self.path)  # for messages
        if not storage.is_url(path) and not self.path.is_file():
            raise FileNotFoundError(f"shard {self.name!r} does not exist: run the ingestion pipeline again")
        try:
            local = self._local()
        except FileNotFoundError:
            raise FileNotFoundError(f"shard {self.name!r} does not exist: run the ingestion pipeline again") from None
        try:
            with safe_open(str(local), framework="numpy") as f:
                meta, names = f.metadata() or {}, set(f.keys())
                shape = f.get_slice("frames").get_shape() if "frames" in names else None
        except Exception as exc:  # noqa: BLE001 - safetensors' SafetensorError on a bad header
            raise ShardError(f"{self.name!r} is not a readable clip shard ({exc}): "
                             "run the ingestion pipeline again") from None
        if meta.get("format") not in READABLE_FORMATS:
            raise ShardError(f"{self.name!r} has shard format {meta.get('format')!r}, this code reads "
                             f"{READABLE_FORMATS}: run the ingestion pipeline again to rebuild it")
        self.metadata = meta
        self.codec = json.loads(meta.get("codec", '{"name": "raw"}'))["name"]
        self.frame_shape = (tuple(json.loads(meta["frame_shape"])) if "frame_shape" in meta
                            else tuple(shape[:4]) if shape is not None else None)  # None: a shard without frames
        if self.codec not in CODECS or (self.codec != "raw" and "frame_data" not in names):
            raise ShardError(f"{self.name!r} holds frames of codec {self.codec!r} that this code cannot read: "
                             "run the ingestion pipeline again")

    def __repr__(self) -> str:
        return f"ShardReader({self.name!r}, codec={self.codec!r}, frame_shape={self.frame_shape})"

    def _local(self) -> Path:
        """The file to open: the shard itself, or its cached copy (fetched again if evicted)."""
        return storage.local_copy(self.path) if isinstance(self.path, str) else self.path

    @property
    def n_clips(self) -> int:
        return self.frame_shape[0]

    def read(self, names: tuple[str, ...] = TENSOR_NAMES, clips: slice | None = None) -> dict[str, np.ndarray]:
        """Tensors by name, of clips `clips` only (None = all); ``frames`` is decoded, uint8 [n, F, H, W, 3]."""
        window = clips if clips is not None else slice(None)
        out = {}
        with safe_open(str(self._local()), framework="numpy") as f:
            for name in names:
                if name == "frames" and self.codec != "raw":
                    out[name] = self._decode(f, window)
                else:
                    out[name] = f.get_slice(name)[window]
        return out

    def _clip_packets(self, f, window: slice):
        """(clip index, its packets' bytes, their offsets [F + 1]) for each clip in `window`."""
        T, F = self.frame_shape[:2]
        data = f.get_slice("frame_data")
        for t in range(*window.indices(T)):
            offsets = f.get_slice("frame_offsets")[t * F:(t + 1) * F + 1]
            yield t, data[int(offsets[0]):int(offsets[-1])], offsets

    def _decode(self, f, window: slice) -> np.ndarray:
        T, F, H, W = self.frame_shape
        n = len(range(*window.indices(T)))
        frames = np.empty((n, F, H, W, 3), np.uint8)
        for k, (t, data, offsets) in enumerate(self._clip_packets(f, window)):
            try:
                decode_clip(self.codec, data, offsets, H, W, out=frames[k])
            except Exception as exc:  # noqa: BLE001 - av / torchvision errors on damaged bytes
                raise ShardError(f"clip {t} of {self.name!r} cannot be decoded ({type(exc).__name__}: "
                                 f"{exc}): the shard is damaged, run the ingestion pipeline again") from None
        return frames

    def frames_on(self, device: torch.device | str, clips: slice | None = None) -> torch.Tensor:
        """Decoded frames uint8 [n, F, H, W, 3] on `device`: JPEG frames are decoded there in one batch
        (nvjpeg on a GPU); other codecs decode on the CPU and are copied."""
        device = torch.device(device)
        window = clips if clips is not None else slice(None)
        T, F, H, W = self.frame_shape
        if self.codec != "jpeg" or not len(range(*window.indices(T))):
            return torch.from_numpy(self.read(("frames",), window)["frames"]).to(device)
        with safe_open(str(self._local()), framework="numpy") as f:
            parts = list(self._clip_packets(f, window))
        data = np.concatenate([d for _, d, _ in parts])
        offsets = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(o) for _, _, o in parts]))])
        return decode_jpeg_on(device, data, offsets).reshape(len(parts), F, H, W, 3)


def load_shard(path: str | os.PathLike, names: tuple[str, ...] = TENSOR_NAMES,
               clips: slice | None = None) -> dict[str, np.ndarray]:
    """`ShardReader(path).read(names, clips)`: some tensors of a shard, frames decoded."""
    return ShardReader(path).read(names, clips)


class ShardStore:
    """A folder of clip shards, read lazily (what the `clip_shards` catalog entry loads); the folder
    may be a URL (its shards are then read through the local read cache, see `ShardReader`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = root.rstrip("/") if storage.is_url(root) else Path(root)

    def __repr__(self) -> str:
        return f"ShardStore({storage.redact(self.root)!r}, {len(self.video_ids())} shards)"

    def path(self, video_id: str) -> Path | str:
        return storage.join(self.root, f"{video_id}{SHARD_SUFFIX}")

    def video_ids(self) -> list[str]:
        """The shards' video ids (one listing request per page of a remote folder)."""
        if isinstance(self.root, str):
            return [name[: -len(SHARD_SUFFIX)] for name in storage.listing(self.root, SHARD_SUFFIX)]
        return sorted(p.name[: -len(SHARD_SUFFIX)] for p in self.root.glob(f"*{SHARD_SUFFIX}"))

    def reader(self, video_id: str) -> ShardReader:
        return ShardReader(self.path(video_id))

    def load(self, video_id: str, names: tuple[str, ...] = TENSOR_NAMES) -> dict[str, np.ndarray]:
        return self.reader(video_id).read(names)

    def record(self, video_id: str) -> dict | None:
        return read_record(self.path(video_id))

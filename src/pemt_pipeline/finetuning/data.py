"""Labelled clips for fine-tuning and the test views (clips x spatial crops) of a video.

Training items (collated by `pemt_pipeline.features.dataset.collate`):
- `LabelledVideos` (video protocol): a `ShardClipDataset` item (all T clips of a video, augmented)
  plus ``label``;
- `SingleClipDataset` (visual_cnn protocol): ONE real clip of the video, drawn from (seed, epoch,
  video) and augmented as in pretraining: ``video`` uint8 [3, F, crop, crop], ``clip_mask`` [1] (True),
  ``label``, ``video_index``.
Test items (`ViewDataset`): every clip of the video (or `test_clips` of them, evenly spaced over its
real clips) x `test_crops` spatial crops: ``video`` uint8 [K, T, 3, F, crop, crop] (K crops),
``audio`` [T, n_mels, L], ``clip_mask`` [T] (True = real and selected), ``label``, ``video_index``.

Spatial crops (`crop_offsets`): `crop` x `crop` windows of the stored frames (no resizing, as the
evaluation's centre crop), centred on the shorter side and evenly spaced along the longer one: 1 crop
= the centre crop; 3 = left, centre, right (top, centre, bottom for portrait frames), as SlowFast's
and the authors' 3-crop test.
``label`` is the class index in `classes` (-1: no label, or one absent from the training split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pemt_pipeline.features.dataset import (SHARD_TENSORS, AugmentConfig, ShardClipDataset, augment_clip,
                                            make_generator)
from pemt_pipeline.features.transforms import center_crop_box
from pemt_pipeline import storage
from pemt_pipeline.media.shards import ShardReader, missing_shards
from pemt_pipeline.training.loop import videos_fingerprint


def class_indices(labels: pd.Series, classes: list[str]) -> np.ndarray:
    """int64 [n]: each label's index in `classes` (-1: missing, or not one of them)."""
    position = {c: i for i, c in enumerate(classes)}
    return np.array([position.get(str(v), -1) if pd.notna(v) else -1 for v in labels], dtype=np.int64)


def training_classes(manifest: pd.DataFrame) -> list[str]:
    """The sorted labels of `manifest` (the training videos): at least 2, else a ValueError."""
    classes = sorted({str(v) for v in manifest["label"].dropna()})
    if len(classes) < 2:
        raise ValueError(f"the training split holds {len(classes)} class(es) ({classes}); fine-tuning needs at least 2")
    return classes


def labelled_fingerprint(manifest: pd.DataFrame, labels: np.ndarray, *extra: str) -> str:
    """A hash of the training videos (ids, content, clips), their labels and `extra` strings (the
    source model's hash, ...): resuming a fine-tuning needs the same."""
    return videos_fingerprint(manifest, np.ascontiguousarray(labels, dtype=np.int64).tobytes(),
                              *(item.encode() for item in extra))


def crop_offsets(height: int, width: int, crop: int, n_crops: int) -> list[tuple[int, int]]:
    """(top, left) of `n_crops` crop x crop windows: centred on the shorter side, evenly spaced from
    one end of the longer side to the other (1 crop: the centre crop, `center_crop_box`)."""
    top, left = center_crop_box(height, width, crop)  # also the error for a crop larger than the frames
    if n_crops == 1:
        return [(top, left)]
    span = max(height, width) - crop
    steps = [span * i // (n_crops - 1) for i in range(n_crops)]
    return [(s, left) for s in steps] if height > width else [(top, s) for s in steps]


def crop_views(frames: np.ndarray | Tensor, crop: int, n_crops: int) -> Tensor:
    """uint8 frames [T, F, H, W, 3] -> uint8 [n_crops, T, 3, F, crop, crop] (`crop_offsets`)."""
    frames = torch.as_tensor(frames)
    boxes = crop_offsets(frames.shape[2], frames.shape[3], crop, n_crops)
    return torch.stack([frames[:, :, t:t + crop, x:x + crop].movedim(-1, 1) for t, x in boxes])


def select_clips(clip_mask: np.ndarray, n_clips: int | None) -> np.ndarray:
    """bool [T]: `n_clips` real clips evenly spaced over the real clips of `clip_mask`: the one at the
    middle of each of `n_clips` equal stretches (None or at least as many as there are: every real clip)."""
    real = np.flatnonzero(clip_mask)
    if n_clips is None or n_clips >= len(real):
        return np.asarray(clip_mask, dtype=bool).copy()
    keep = np.zeros(len(clip_mask), dtype=bool)
    keep[real[((2 * np.arange(n_clips) + 1) * len(real)) // (2 * n_clips)]] = True
    return keep


def _check_shards(manifest: pd.DataFrame) -> list[Path | str]:
    paths = [p if storage.is_url(p) else Path(p) for p in manifest["shard_path"]]
    missing = missing_shards(paths)
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) of the manifest are missing, e.g. {missing[0]!r}: "
                                "run the ingestion pipeline again")
    return paths


class LabelledVideos(Dataset):
    """`ShardClipDataset` (training augmentation) items with ``label`` added (labels: int64 [n])."""

    def __init__(self, manifest: pd.DataFrame, labels: np.ndarray, augment: AugmentConfig, seed: int = 0):
        self.clips = ShardClipDataset(manifest, augment, train=True, seed=seed)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**self.clips[i], "label": self.labels[i]}


class SingleClipDataset(Dataset):
    """One random real clip per video, augmented (see the module docstring); only that clip's frames
    are read and decoded."""

    def __init__(self, manifest: pd.DataFrame, labels: np.ndarray, augment: AugmentConfig, seed: int = 0):
        self.paths = _check_shards(manifest)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.augment, self.seed, self.epoch = augment, seed, 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        reader = ShardReader(self.paths[i])
        real = np.flatnonzero(reader.read(("clip_mask",))["clip_mask"])
        if not len(real):
            raise ValueError(f"shard {str(self.paths[i])!r} has no real clip: run the ingestion pipeline again")
        g = make_generator(self.seed, self.epoch, i)
        t = int(real[int(torch.randint(len(real), (), generator=g))])
        frames = torch.from_numpy(reader.read(("frames",), clips=slice(t, t + 1))["frames"][0])  # [F, H, W, 3]
        clip = augment_clip(frames.permute(0, 3, 1, 2), self.augment, g)  # [F, 3, c, c]
        return {"video": clip.transpose(0, 1).contiguous(), "clip_mask": torch.ones(1, dtype=torch.bool),
                "label": self.labels[i], "video_index": torch.tensor(i, dtype=torch.int64)}


class ViewDataset(Dataset):
    """A video's test views: its (selected) clips x `n_crops` spatial crops (module docstring).
    labels: int64 [n] class indices (None: all -1, e.g. for prediction)."""

    def __init__(self, manifest: pd.DataFrame, crop: int, n_crops: int, n_clips: int | None = None,
                 labels: np.ndarray | None = None):
        self.paths = _check_shards(manifest)
        n = len(self.paths)
        self.labels = torch.as_tensor(np.full(n, -1) if labels is None else labels, dtype=torch.int64)
        self.crop, self.n_crops, self.n_clips = crop, n_crops, n_clips

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        shard = ShardReader(self.paths[i]).read(SHARD_TENSORS)
        clip_mask = select_clips(shard["clip_mask"].astype(bool), self.n_clips)
        return {"video": crop_views(shard["frames"], self.crop, self.n_crops),
                "audio": torch.from_numpy(np.ascontiguousarray(shard["log_mel"], dtype=np.float32)),
                "clip_mask": torch.from_numpy(clip_mask), "label": self.labels[i],
                "video_index": torch.tensor(i, dtype=torch.int64)}

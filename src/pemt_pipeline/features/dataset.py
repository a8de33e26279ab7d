"""Clip sequences read from shards, as the model sees them: a dataset of videos with reproducible
augmentation, its collate function, and `model_batch` (device + normalisation).

An item is one video (all T clips of its shard); a batch of B items, collated, holds
- ``video``       uint8   [B, T, 3, F, crop, crop]  RGB clips (`model_batch` moves a batch to the
                                                     model's device and normalises them there)
- ``audio``       float32 [B, T, n_mels, L]          log-mel clips
- ``clip_mask``   bool    [B, T]                     True = real clip
- ``video_index`` int64   [B]                        row of the video in the manifest
- ``clip_ids``    int64   [B, T]                     global clip id (clip table row), -1 = padding

Randomness never comes from global RNGs: an item's augmentation is a function of
(seed, epoch, index), so results do not depend on the number of DataLoader workers, and a resumed
run sees the same data. Training, evaluation and pruning all read clips through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchaudio.functional as AF
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from torchvision.transforms.v2 import functional as TF

from pemt_pipeline.configs import above, at_least, between, from_params, require
from pemt_pipeline import storage
from pemt_pipeline.media.shards import ShardReader, missing_shards

from .transforms import VIDEO_MEAN, VIDEO_STD, center_crop_clips, normalize

SHARD_TENSORS = ("frames", "log_mel", "clip_mask")  # the only tensors training reads


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys, e.g. (seed, epoch, index)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def make_generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded from `derive_seed(*keys)`."""
    return torch.Generator().manual_seed(derive_seed(*keys))


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (evaluation uses only `crop`, `mean` and `std`).

    Video, per clip (all F frames of a clip get the same crop and flip; clips of a video differ):
    the short side is resized to a size drawn uniformly from `short_side_range`, then a
    `crop` x `crop` window is cut at a uniform position (done in one step as a
    torchvision `resized_crop` of the matching window of the stored frames), flipped horizontally
    with probability `flip`, and shifted in time by an integer drawn from
    [-frame_jitter, frame_jitter] (frames past either end repeat the edge frame).
    Audio, per clip (SpecAugment-style, torchaudio `mask_along_axis_iid`): one frequency band and
    one time span are set to the video's mean log-mel value; their widths are drawn uniformly
    from {0, ..., W} with W = round(rate * n_mels) for `freq_mask` and round(rate * L) for
    `time_mask` (at least 1 if rate > 0; rate 0 disables). METHOD.md's "rate 0.05" is read so.
    """

    crop: int = 56  # square crop fed to the visual CNN (paper 112)
    short_side_range: tuple[int, int] = (56, 64)  # (min, max) resized short side (paper 128-160)
    flip: float = 0.5  # probability of a horizontal flip
    frame_jitter: int = 0  # max temporal shift in frames within a clip (not in the paper; 0 = off)
    freq_mask: float = 0.05  # max masked frequency band, as a share of n_mels
    time_mask: float = 0.05  # max masked time span, as a share of the clip's mel frames
    mean: float = VIDEO_MEAN  # video normalisation (x / 255 - mean) / std
    std: float = VIDEO_STD

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Ranges; ValueError naming `training.augment.<key>`."""
        require("training.augment", self, crop=at_least(1),
                short_side_range=((lambda v: len(v) == 2 and self.crop <= v[0] <= v[1]),
                                  f"[min, max] with crop ({self.crop}) <= min <= max"),
                flip=between(0, 1), frame_jitter=at_least(0), freq_mask=between(0, 1, high_open=True),
                time_mask=between(0, 1, high_open=True), std=above(0))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        """From the YAML `augment:` block; unknown keys raise a ValueError naming them."""
        return from_params(cls, d, "training.augment")


def videos_in_splits(manifest: pd.DataFrame, splits: tuple[str, ...], batch_size: int, key: str) -> pd.DataFrame:
    """The manifest's videos of `splits` (renumbered from 0); a ValueError naming `key` (the batch
    size parameter) when they are fewer than one batch."""
    subset = manifest[manifest["split"].isin(splits)].reset_index(drop=True)
    if len(subset) < batch_size:
        raise ValueError(f"{len(subset)} videos in splits {list(splits)}, fewer than {key} ({batch_size})")
    return subset


def mask_width(rate: float, size: int) -> int:
    """Largest masked width for a masking rate over an axis of `size` (0 = no masking)."""
    return max(1, round(rate * size)) if rate > 0 else 0


def augment_clip(clip: Tensor, cfg: AugmentConfig, g: torch.Generator) -> Tensor:
    """uint8 [F, 3, H, W] -> uint8 [F, 3, crop, crop]: random resized crop, flip, frame jitter."""
    n_frames, _, H, W = clip.shape
    lo, hi = cfg.short_side_range
    side = int(torch.randint(lo, hi + 1, (), generator=g))  # resized short side
    box = max(1, round(cfg.crop * min(H, W) / side))  # crop window in stored pixels
    top = int(torch.randint(0, H - box + 1, (), generator=g))
    left = int(torch.randint(0, W - box + 1, (), generator=g))
    clip = TF.resized_crop(clip, top, left, box, box, [cfg.crop, cfg.crop], antialias=True)
    if float(torch.rand((), generator=g)) < cfg.flip:
        clip = TF.horizontal_flip(clip)
    if cfg.frame_jitter:
        shift = torch.randint(-cfg.frame_jitter, cfg.frame_jitter + 1, (), generator=g)
        clip = clip[(torch.arange(n_frames) + shift).clamp(0, n_frames - 1)]
    return clip


def augment_audio(log_mel: Tensor, clip_mask: Tensor, cfg: AugmentConfig,
                  g: torch.Generator) -> Tensor:
    """float32 [T, n_mels, L] -> same, one frequency and one time mask per clip (AugmentConfig)."""
    real = log_mel[clip_mask]
    fill = float(real.mean()) if real.numel() else 0.0
    x = log_mel.unsqueeze(1)  # [T, 1, n_mels, L]: iid masks per clip
    # torchaudio draws from the global RNG: fork it and seed it from this item's generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (), generator=g)))
        for axis, rate in ((2, cfg.freq_mask), (3, cfg.time_mask)):
            width = mask_width(rate, x.shape[axis])
            if width:  # mask_along_axis_iid draws widths in {0, ..., mask_param - 1}
                x = AF.mask_along_axis_iid(x, width + 1, fill, axis)
    return x.squeeze(1)


class ShardClipDataset(Dataset):
    """One item per video (row) of an ingestion manifest; see the module docstring for the item.

    clip_ids: the global ids of the real clips of `manifest`'s videos, concatenated in manifest
    order (length manifest.n_clips.sum()); video i's real clips take ids
    clip_ids[offset_i : offset_i + n_clips_i] in clip order. None = np.arange(n_clips.sum()),
    which is `pemt_pipeline.features.embed.clip_table(manifest)["clip_id"]` (that table numbers
    the real clips of each video in manifest order). Pass the clip table's ids when the embedding
    store was built from a larger manifest than this one.
    Call `set_epoch(epoch)` before each epoch (with persistent DataLoader workers the workers keep
    their copy of the dataset, so do not use them). Shards at fsspec URLs are read through the
    bounded local read cache (`pemt_pipeline.storage.local_copy`, in the DataLoader workers).
    """

    def __init__(self, manifest: pd.DataFrame, augment: AugmentConfig, train: bool,
                 clip_ids: np.ndarray | None = None, seed: int = 0):
        self.paths = [p if storage.is_url(p) else Path(p) for p in manifest["shard_path"]]
        missing = missing_shards(self.paths)
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) of the manifest are missing, e.g. "
                                    f"{missing[0]!r}: run the ingestion pipeline again")
        self.n_clips = manifest["n_clips"].to_numpy(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.n_clips)])  # [n_videos + 1]
        if clip_ids is None:
            clip_ids = np.arange(self.offsets[-1], dtype=np.int64)
        if len(clip_ids) != self.offsets[-1]:
            raise ValueError(f"clip_ids holds {len(clip_ids)} ids, "
                             f"the manifest {self.offsets[-1]} real clips")
        self.clip_ids = np.asarray(clip_ids, dtype=np.int64)
        self.augment, self.train, self.seed, self.epoch = augment, train, seed, 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        shard = ShardReader(self.paths[i]).read(SHARD_TENSORS)  # frames decoded here (in the DataLoader worker)
        clip_mask = torch.from_numpy(shard["clip_mask"].astype(bool))  # [T]
        n_real = int(clip_mask.sum())
        if n_real != self.n_clips[i]:
            raise ValueError(f"shard {storage.redact(self.paths[i])!r} has {n_real} real clips, the manifest "
                             f"says {self.n_clips[i]}: run the ingestion pipeline again")
        log_mel = torch.from_numpy(np.ascontiguousarray(shard["log_mel"], dtype=np.float32))
        cfg = self.augment
        if self.train:
            g = make_generator(self.seed, self.epoch, i)
            frames = torch.from_numpy(shard["frames"]).permute(0, 1, 4, 2, 3)  # [T, F, 3, H, W]
            clips = torch.stack([augment_clip(c, cfg, g) for c in frames])  # [T, F, 3, c, c]
            video = clips.transpose(1, 2)  # [T, 3, F, c, c]
            log_mel = augment_audio(log_mel, clip_mask, cfg, g)
        else:
            video = center_crop_clips(shard["frames"], cfg.crop)  # [T, 3, F, c, c]
        clip_ids = torch.full(clip_mask.shape, -1, dtype=torch.int64)
        clip_ids[clip_mask] = torch.from_numpy(self.clip_ids[self.offsets[i]:self.offsets[i + 1]])
        return {"video": video, "audio": log_mel, "clip_mask": clip_mask,
                "video_index": torch.tensor(i, dtype=torch.int64), "clip_ids": clip_ids}


def model_batch(batch: dict[str, Tensor], device: torch.device | str, augment: AugmentConfig) -> dict[str, Tensor]:
    """A collated batch on `device`, its uint8 video normalised there (float32, AugmentConfig's mean
    and std): the loader's workers and the host-to-device copy move 4x fewer bytes than float clips."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    batch["video"] = normalize(batch["video"], augment.mean, augment.std)
    return batch


def collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack items into a batch (every value is a tensor and all shards of a manifest hold the same
    T, so this is torch's `default_collate`)."""
    return default_collate(items)

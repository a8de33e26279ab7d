"""Shard arrays -> model inputs, deterministic (evaluation / embedding) version.

Video: uint8 [N, F, H, W, 3] -> float32 [N, 3, F, crop, crop], the centre crop, scaled to [0, 1]
and normalised with (x - mean) / std (METHOD.md: 0.45 / 0.225). Data loaders hand over uint8 clips
and `normalize` runs where the model is (4x fewer bytes through workers and to the GPU).
Audio: log-mel [N, n_mels, frames] -> [N, 1, n_mels, frames]. Training adds its random augmentations
on top of the same normalisation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

VIDEO_MEAN = 0.45
VIDEO_STD = 0.225


def center_crop_box(height: int, width: int, crop: int) -> tuple[int, int]:
    """Top-left corner of a centred crop x crop window."""
    if crop > min(height, width):
        raise ValueError(f"crop {crop} is larger than the stored frames ({height}x{width}); "
                         "lower the crop or ingest with a larger short_side")
    return (height - crop) // 2, (width - crop) // 2


def normalize(video: Tensor, mean: float = VIDEO_MEAN, std: float = VIDEO_STD) -> Tensor:
    """uint8 -> float32 (x / 255 - mean) / std, same layout, on the tensor's device."""
    return video.contiguous().float().div_(255.0).sub_(mean).div_(std)  # uint8 copy first: a strided .float() is slow


def normalize_video(frames: Tensor, mean: float = VIDEO_MEAN, std: float = VIDEO_STD) -> Tensor:
    """uint8 [..., F, H, W, 3] -> float32 [..., 3, F, H, W] normalised."""
    return normalize(frames, mean, std).movedim(-1, -4)


def center_crop_clips(frames: np.ndarray | Tensor, crop: int) -> Tensor:
    """uint8 [N, F, H, W, 3] (array, or tensor on any device) -> uint8 [N, 3, F, crop, crop], the
    centre crop (a copy: it does not keep the whole frames alive)."""
    frames = torch.as_tensor(frames)
    top, left = center_crop_box(frames.shape[2], frames.shape[3], crop)
    return frames[:, :, top:top + crop, left:left + crop].contiguous().movedim(-1, 1)


def video_clips(frames: np.ndarray, crop: int, mean: float = VIDEO_MEAN, std: float = VIDEO_STD) -> Tensor:
    """uint8 [N, F, H, W, 3] -> float32 [N, 3, F, crop, crop] (centre crop, normalised)."""
    return normalize(center_crop_clips(frames, crop), mean, std)


def audio_clips(log_mel: np.ndarray) -> Tensor:
    """log-mel [N, n_mels, frames] -> float32 [N, 1, n_mels, frames]."""
    return torch.from_numpy(np.ascontiguousarray(log_mel, dtype=np.float32)).unsqueeze(1)

"""Frozen features of a model over an ingestion manifest, per video (no Kedro).

Every video's clips go through the model without augmentation (centre crop) and without MEP
masking; each stream is pooled over the video's real clips:

    visual_cnn, audio_cnn   mean of the clip CNN embeddings
    visual, audio           mean of the unimodal Transformers' clip outputs (mid, late fusion)
    multimodal              mean of the multimodal Transformer's visual and audio clip outputs
                            (early, mid fusion)

`pair_scores` rates every (video, audio track) pair of a set of videos with the model's Correct
Pair Prediction head: the cross-modal retrieval score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pemt_pipeline.devices import resolve_device
from pemt_pipeline.models import PEMTModel
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.features.export import masked_mean, stream_batches
from pemt_pipeline.models import CPPHead, cpp_summary

__all__ = ["VideoFeatures", "masked_mean", "pair_scores", "video_features"]


@dataclass
class VideoFeatures:
    """Pooled features per stream [n_videos, d] in manifest order, and the clip embeddings and
    masks kept for pair scoring (visual [n, T, Dv], audio [n, T, Da], mask [n, T])."""

    pooled: dict[str, np.ndarray]
    visual: Tensor
    audio: Tensor
    mask: Tensor


@torch.inference_mode()
def video_features(model: PEMTModel, manifest: pd.DataFrame, augment: AugmentConfig,
                   batch_size: int = 8, device: str = "auto", progress: bool = True) -> VideoFeatures:
    """Run `model` (eval mode) over every video of `manifest` -> VideoFeatures."""
    if manifest.empty:
        raise ValueError("the manifest lists no video: nothing to evaluate")
    pooled: dict[str, list[Tensor]] = {}
    keep = {"visual": [], "audio": [], "mask": []}
    for batch in stream_batches(model, manifest, augment, batch_size, device, progress):
        mask, v, a, streams = batch.mask, batch.visual, batch.audio, batch.streams  # [B, T], [B, T, D], ...
        out = {"visual_cnn": masked_mean(v, mask), "audio_cnn": masked_mean(a, mask)}
        for m in ("visual", "audio"):
            if m in streams:
                out[m] = masked_mean(streams[m].clips, mask)
        if "multimodal_visual" in streams:
            out["multimodal"] = 0.5 * (masked_mean(streams["multimodal_visual"].clips, mask)
                                       + masked_mean(streams["multimodal_audio"].clips, mask))
        for k, x in out.items():
            pooled.setdefault(k, []).append(x.float().cpu())
        for k, x in (("visual", v), ("audio", a), ("mask", mask)):
            keep[k].append(x.cpu())
    return VideoFeatures({k: torch.cat(x).numpy() for k, x in pooled.items()},
                         torch.cat(keep["visual"]), torch.cat(keep["audio"]), torch.cat(keep["mask"]))


@torch.inference_mode()
def pair_scores(model: PEMTModel, cpp_head: CPPHead, features: VideoFeatures,
                rows: np.ndarray | None = None, device: str = "auto") -> np.ndarray:
    """CPP logits S [n, n] for the videos `rows` (default all): S[i, j] = score of video i's
    frames with video j's audio. n Transformer passes of batch n (one per cyclic shift)."""
    dev = resolve_device(device)
    model, cpp_head = model.eval().to(dev), cpp_head.eval().to(dev)
    idx = torch.arange(len(features.mask)) if rows is None else torch.as_tensor(rows)
    v, a, mask = (x[idx].to(dev) for x in (features.visual, features.audio, features.mask))
    n = len(idx)
    scores = torch.empty(n, n)
    ar = torch.arange(n)
    for shift in range(n):
        perm = (ar + shift) % n
        streams = model.contextualize(v, a[perm.to(dev)], mask, mask[perm.to(dev)])
        scores[ar, perm] = cpp_head(cpp_summary(streams)).float().cpu()
    return scores.numpy()

"""Class scores of a fine-tuned model on a manifest's videos, per view and per video (no Kedro).

A view is one clip seen through one spatial crop (`data.ViewDataset`). Its scores are class
probabilities:
- `video` protocol: the whole model runs once per crop on the video's (selected) clips; a clip's
  scores are the mean of the softmax of the concat head and of the sequence head at that clip (the
  authors sum the two; the mean ranks the same and stays a probability);
- `visual_cnn` protocol: the visual CNN and its head on each clip and crop, softmax.
A video's scores are its views' scores averaged (over its clips and crops: the authors' "sum"
ensemble, divided by the number of views). Clip-level accuracy scores every view on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pemt_pipeline.devices import resolve_device
from pemt_pipeline.evaluation.probe import classification_metrics
from pemt_pipeline.features.dataset import AugmentConfig, collate, model_batch
from pemt_pipeline.models import FinetunedModel

from .data import ViewDataset


@dataclass
class Scores:
    """video [n_videos, C] mean view probabilities (manifest order); views [n_views, C] (None when not
    kept) with view_video [n_views] (the video row of each view)."""

    video: np.ndarray
    views: np.ndarray | None
    view_video: np.ndarray
    crops: int

    @property
    def views_per_video(self) -> np.ndarray:
        return np.bincount(self.view_video, minlength=len(self.video))


def batch_view_scores(finetuned: FinetunedModel, batch: dict[str, Tensor]) -> Tensor:
    """Probabilities [B, K, T, C] of a `ViewDataset` batch (already on the model's device, normalised)."""
    model, head = finetuned.model, finetuned.classifier
    video, mask = batch["video"], batch["clip_mask"]  # [B, K, T, 3, F, c, c], [B, T]
    out = []
    for k in range(video.shape[1]):
        if finetuned.protocol == "video":
            concat, sequence = head(model(video[:, k], batch["audio"], mask))
            p = 0.5 * (concat.float().softmax(-1) + sequence.float().softmax(-1))  # [B, T, C]
        else:
            p = torch.zeros(*mask.shape, head.cfg.n_classes, device=video.device)
            p[mask] = head(model.visual_cnn(video[:, k][mask])).float().softmax(-1)
        out.append(p)
    return torch.stack(out, dim=1)


@torch.inference_mode()
def view_scores(finetuned: FinetunedModel, manifest: pd.DataFrame, augment: AugmentConfig, n_crops: int,
                n_clips: int | None = None, batch_size: int = 4, device: str = "auto", num_workers: int = 0,
                keep_views: bool = True, progress: bool = True) -> Scores:
    """Scores of every video of `manifest` (its `n_clips` evenly spaced clips, None: all, x `n_crops`
    spatial crops of augment.crop px), in eval mode."""
    if manifest.empty:
        raise ValueError("the manifest lists no video: nothing to score")
    dev = resolve_device(device)
    finetuned.model.eval().to(dev)
    finetuned.classifier.eval().to(dev)
    loader = DataLoader(ViewDataset(manifest, augment.crop, n_crops, n_clips), batch_size=batch_size, shuffle=False,
                        collate_fn=collate, num_workers=num_workers)
    video, views, owner = [], [], []
    for batch in tqdm(loader, desc=f"scoring ({finetuned.protocol})", unit="batch", disable=not progress):
        batch = model_batch(batch, dev, augment)
        p = batch_view_scores(finetuned, batch)  # [B, K, T, C]
        real = batch["clip_mask"][:, None, :].expand(p.shape[:3])  # [B, K, T]
        video.append(((p * real[..., None]).sum((1, 2)) / real.sum((1, 2))[:, None]).cpu())
        owner.append(batch["video_index"][:, None, None].expand(p.shape[:3])[real].cpu())
        if keep_views:
            views.append(p[real].cpu())
    return Scores(torch.cat(video).numpy(), torch.cat(views).numpy() if keep_views else None,
                  torch.cat(owner).numpy(), n_crops)


def score_metrics(scores: Scores, labels: pd.Series, classes: list[str], top_k: int = 5) -> dict[str, dict]:
    """Clip-level (every view) and video-level `classification_metrics` against the videos' labels."""
    y = labels.astype(str).to_numpy()
    classes_array = np.asarray(classes)
    out = {"video": classification_metrics(scores.video, y, classes_array, top_k)}
    if scores.views is not None:
        out["clip"] = classification_metrics(scores.views, y[scores.view_video], classes_array, top_k)
    return out

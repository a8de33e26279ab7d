"""Heads that are part of a saved model: the Correct Pair Prediction (CPP) classifier, the
audio-visual matching score that cross-modal retrieval ranks by."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .fusion import MODALITIES, StreamOutput

class CPPHead(nn.Module):
    """Binary classifier on a summary [B, d_in] -> logits [B] (Linear + GELU + Linear)."""

    def __init__(self, d_in: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_in // 2), nn.GELU(), nn.Linear(d_in // 2, 1))

    def forward(self, summary: Tensor) -> Tensor:
        return self.net(summary).squeeze(-1)


def cpp_summary(streams: dict[str, StreamOutput]) -> Tensor:
    """[B, 2D]: the multimodal stream's visual and audio summaries (early, mid), else the visual
    and audio Transformers' summaries (late)."""
    names = MODALITIES
    if "multimodal_visual" in streams:
        names = ("multimodal_visual", "multimodal_audio")
    return torch.cat([streams[n].summary for n in names], dim=-1)

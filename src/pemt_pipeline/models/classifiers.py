"""Classification heads for fine-tuning (the authors' downstream heads; METHOD.md section 5), built on
the public outputs of `PEMTModel` (clip CNN embeddings and the Transformers' `StreamOutput`s).

- `video` (Kinetics-Sounds protocol, the authors' MultimodalSequenceClassify): two heads whose
  cross-entropy losses are summed. `concat`: dropout + linear on [visual CNN embedding ; audio CNN
  embedding] of each clip. `sequence`: for each clip t and modality m, [summary output ; clip output
  t] of m's stream (the multimodal Transformer's visual and audio tokens for early and mid fusion,
  the visual and audio Transformers' for late) -> dropout -> bias-free linear 2D -> D; the two
  modalities summed, LayerNorm, linear -> logits per clip. As in the authors' code the dropout acts on
  the heads' inputs.
- `visual_cnn` (UCF101 protocol): dropout + linear on the visual CNN's (pooled) clip embedding.

Linear weights are drawn from N(0, init_std) with zero biases (the authors' FC_INIT_STD 0.01).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from pemt_pipeline.configs import above, at_least, between, from_params, one_of, require

from .dropout import Dropout
from .factorized import linear
from .fusion import ModelOutput, PEMTModel, StreamOutput

CLASSIFIER_KINDS = ("video", "visual_cnn")


@dataclass(frozen=True)
class ClassifierConfig:
    """A head's sizes (taken from the model it sits on, so a file's head rebuilds without the model)."""

    kind: str  # video | visual_cnn
    n_classes: int
    visual_dim: int  # visual CNN embedding size
    audio_dim: int  # audio CNN embedding size
    hidden: int  # Transformer width D
    dropout: float = 0.5  # on the heads' inputs (the authors' MODEL.DROPOUT_RATE)
    layer_norm_eps: float = 1e-5  # the sequence head's LayerNorm (the authors' MODEL.EPSILON)
    init_std: float = 0.01  # normal init of the linear weights (the authors' MODEL.FC_INIT_STD)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        one = at_least(1)
        require("classifier", self, kind=one_of(CLASSIFIER_KINDS), n_classes=at_least(2), visual_dim=one,
                audio_dim=one, hidden=one, dropout=between(0, 1, high_open=True), layer_norm_eps=above(0),
                init_std=above(0))

    @classmethod
    def for_model(cls, kind: str, model: PEMTModel, n_classes: int, **options: Any) -> ClassifierConfig:
        """The head of `kind` for `model` (sizes read from its CNNs and Transformer width)."""
        return cls(kind, n_classes, model.visual_cnn.out_dim, model.audio_cnn.out_dim,
                   model.cfg.transformer.hidden, **options)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        return from_params(cls, d, "classifier")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LinearClassifier(nn.Module):
    """Dropout + linear: x [..., d_in] -> logits [..., n_classes]."""

    def __init__(self, d_in: int, n_classes: int, dropout: float, init_std: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.linear = linear(d_in, n_classes, init_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.dropout(x))


def classified_streams(streams: dict[str, StreamOutput]) -> tuple[StreamOutput, StreamOutput]:
    """(visual, audio) streams the sequence head reads: the multimodal Transformer's visual and audio
    tokens when the fusion has it (early, mid), else the visual and audio Transformers' (late)."""
    if "multimodal_visual" in streams:
        return streams["multimodal_visual"], streams["multimodal_audio"]
    return streams["visual"], streams["audio"]


class SequenceClassifier(nn.Module):
    """Per clip t: sum over modalities of W_m [summary_m ; clip_m,t] (bias-free, 2D -> D, dropout on
    the input), LayerNorm, linear -> logits [B, T, n_classes]."""

    def __init__(self, hidden: int, n_classes: int, dropout: float, eps: float, init_std: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.visual = linear(2 * hidden, hidden, init_std, bias=False)
        self.audio = linear(2 * hidden, hidden, init_std, bias=False)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.linear = linear(hidden, n_classes, init_std)

    def forward(self, visual: StreamOutput, audio: StreamOutput) -> Tensor:
        def pair(s: StreamOutput) -> Tensor:  # [B, T, 2D]: the summary beside each clip output
            return torch.cat([s.summary.unsqueeze(1).expand_as(s.clips), s.clips], dim=-1)

        h = self.visual(self.dropout(pair(visual))) + self.audio(self.dropout(pair(audio)))  # [B, T, D]
        return self.linear(self.norm(h))


class VideoClassifier(nn.Module):
    """The `video` protocol's two heads on a model output -> (concat logits [B, T, C], sequence logits
    [B, T, C]), both per clip (undefined at padded clips)."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.concat = LinearClassifier(cfg.visual_dim + cfg.audio_dim, cfg.n_classes, cfg.dropout, cfg.init_std)
        self.sequence = SequenceClassifier(cfg.hidden, cfg.n_classes, cfg.dropout, cfg.layer_norm_eps, cfg.init_std)

    def forward(self, output: ModelOutput) -> tuple[Tensor, Tensor]:
        streams = {k: getattr(output, k) for k in ("visual", "audio", "multimodal_visual", "multimodal_audio")
                   if getattr(output, k) is not None}
        concat = self.concat(torch.cat([output.visual_embeddings, output.audio_embeddings], dim=-1))
        return concat, self.sequence(*classified_streams(streams))


class VisualCNNClassifier(nn.Module):
    """The `visual_cnn` protocol's head: visual CNN clip embeddings [N, Dv] -> logits [N, C]."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.linear = LinearClassifier(cfg.visual_dim, cfg.n_classes, cfg.dropout, cfg.init_std)

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.linear(embeddings)


def build_classifier(cfg: ClassifierConfig) -> VideoClassifier | VisualCNNClassifier:
    """The head of `cfg.kind`, freshly initialised (from the global RNG)."""
    return VideoClassifier(cfg) if cfg.kind == "video" else VisualCNNClassifier(cfg)

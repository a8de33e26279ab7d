"""Model configuration: plain dataclasses; their defaults are the paper's sizes (METHOD.md). The CNN
options where the authors' released code differs (visual stem stride in time, audio stem kernel, norms
between separable halves, which audio stages are separable) default to the project's original
choices, so earlier model files keep loading; conf/paper sets the released code's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pemt_pipeline.configs import above, at_least, between, each, from_params, one_of, require

FUSIONS = ("early", "mid", "late")
# The CNN options where the authors' released code differs from the project's defaults
# (../shared/fixtures/avbert_small/README.md section 6); conf/paper sets them.
RELEASED_CNN_OPTIONS = {"visual": {"stem_temporal_stride": 2},
                        "audio": {"stem_kernel": 9, "separable_inner_norm": True,
                                  "separable_stages": (True, True, False, False)}}
TRANSFORMER_SHARING = ("none", "full", "lowrank")
ORTHOGONAL_MAPS = ("matrix_exp", "cayley", "householder")


@dataclass
class _ResNetConfig:
    width: int  # stem channels; stage i has width * 2**i inner and 4x that output channels
    depths: tuple[int, ...]  # bottleneck blocks per stage (res2..res5)

    @property
    def out_dim(self) -> int:
        return self.width * 2 ** (len(self.depths) - 1) * 4

    SECTION = "model.cnn"

    def validate(self) -> None:
        """Sizes >= 1 and one per-stage value per stage; ValueError naming `model.<cnn>.<key>`."""
        one, stages = at_least(1), len(self.depths)
        per_stage = {name: ((lambda v: len(v) == stages and all(x >= 1 for x in v)),
                            f"a list of {stages} values >= 1 (one per stage of depths)")
                     for name in ("temporal_kernels", "strides") if hasattr(self, name)}
        kernels = {name: one for name in ("stem_temporal_kernel", "stem_temporal_stride", "stem_kernel", "in_channels")
                   if hasattr(self, name)}
        flags = {name: (lambda v: isinstance(v, bool), "true or false")
                 for name in ("separable_inner_norm",) if hasattr(self, name)}
        if hasattr(self, "separable_stages"):
            flags["separable_stages"] = ((lambda v: len(v) == stages and all(isinstance(x, bool) for x in v)),
                                         f"a list of {stages} true/false values (one per stage of depths)")
        require(self.SECTION, self, width=one, depths=each(one), **kernels, **per_stage, **flags)


@dataclass
class VisualCNNConfig(_ResNetConfig):
    """3D ResNet (single pathway, bottleneck). Defaults: ResNet-50, width 64 -> 2048-d clips."""

    SECTION = "model.visual"
    width: int = 64
    depths: tuple[int, ...] = (3, 4, 6, 3)
    stem_temporal_kernel: int = 5
    # temporal stride of the stem conv: 1 keeps every frame; the authors' released code uses 2, so
    # every later stage runs on half the frames
    stem_temporal_stride: int = 1
    temporal_kernels: tuple[int, ...] = (1, 1, 3, 3)  # temporal kernel of each stage's first conv
    in_channels: int = 3


@dataclass
class AudioCNNConfig(_ResNetConfig):
    """2D ResNet over log-mel spectrograms; the stem and the 3 x 3 convs of the `separable_stages`
    are separable (k x 1 then 1 x k). Defaults: ResNet-50, width 32 -> 1024-d clips, every stage
    separable, no norm between the halves. The authors' released code: stem_kernel 9,
    separable_inner_norm true, separable_stages [true, true, false, false]."""

    SECTION = "model.audio"
    width: int = 32
    depths: tuple[int, ...] = (3, 4, 6, 3)
    strides: tuple[int, ...] = (2, 2, 2, 2)  # stride of each stage (the stem keeps full size)
    stem_kernel: int = 7
    separable_inner_norm: bool = False  # BatchNorm + ReLU between the k x 1 and 1 x k halves
    separable_stages: tuple[bool, ...] = (True, True, True, True)  # per stage: separable 3 x 3, else plain


@dataclass
class TransformerConfig:
    """Post-LayerNorm BERT layer sizes."""

    hidden: int = 768
    n_layers: int = 6
    n_heads: int = 12
    ffn: int = 3072
    dropout: float = 0.1  # on embeddings, attention output and FFN output
    attention_dropout: float = 0.1  # on attention probabilities
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02  # normal init of linear and embedding weights (BERT)

    def validate(self) -> None:
        """Sizes and rates; ValueError naming `model.transformer.<key>`."""
        one, rate = at_least(1), between(0, 1, high_open=True)
        require("model.transformer", self, hidden=one, n_layers=one, n_heads=one, ffn=one, dropout=rate,
                attention_dropout=rate, layer_norm_eps=above(0), init_std=above(0))
        if self.hidden % self.n_heads:
            raise ValueError(f"model.transformer.hidden {self.hidden} is not divisible by n_heads {self.n_heads}")


@dataclass
class ModelConfig:
    """The fused audio-visual model and how its Transformers share parameters."""

    visual: VisualCNNConfig = field(default_factory=VisualCNNConfig)
    audio: AudioCNNConfig = field(default_factory=AudioCNNConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    fusion: str = "mid"  # early | mid | late
    share_layers: bool = True  # one layer applied at every depth (ALBERT)
    share_transformers: str = "lowrank"  # none | full | lowrank (W = U Sigma V^T, U shared)
    rank: int = 128  # O, rank of the factorised weights
    orthogonal_map: str = "matrix_exp"  # matrix_exp | cayley | householder, keeps Sigma orthogonal
    max_clips: int = 10  # T, longest clip sequence (position embeddings hold max_clips + 1)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Choices and sizes, then each part's `validate()`; ValueError naming `model.<key>`."""
        require("model", self, fusion=one_of(FUSIONS), share_layers=(lambda v: isinstance(v, bool), "true or false"),
                share_transformers=one_of(TRANSFORMER_SHARING), orthogonal_map=one_of(ORTHOGONAL_MAPS),
                rank=at_least(1), max_clips=at_least(1))
        for part in (self.visual, self.audio, self.transformer):
            part.validate()

    @property
    def transformer_names(self) -> tuple[str, ...]:
        """The Transformers (modality groups) of this fusion, in group order."""
        return {"early": ("multimodal",), "mid": ("visual", "audio", "multimodal"),
                "late": ("visual", "audio")}[self.fusion]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from the YAML `model:` block (missing keys keep their defaults)."""
        d = dict(d)
        parts = {
            key: from_params(sub, d.pop(key, None) or {}, f"model.{key}")
            for key, sub in (("visual", VisualCNNConfig), ("audio", AudioCNNConfig),
                             ("transformer", TransformerConfig))
        }
        return from_params(cls, d, "model", **parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

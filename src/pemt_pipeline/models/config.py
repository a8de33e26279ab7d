"""Model configuration: plain dataclasses; their defaults are the paper's (METHOD.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pemt_pipeline.configs import from_params

FUSIONS = ("early", "mid", "late")
TRANSFORMER_SHARING = ("none", "full", "lowrank")
ORTHOGONAL_MAPS = ("matrix_exp", "cayley", "householder")
PARAMETERS_FILE = "parameters_model.yml"


@dataclass
class _ResNetConfig:
    width: int  # stem channels; stage i has width * 2**i inner and 4x that output channels
    depths: tuple[int, ...]  # bottleneck blocks per stage (res2..res5)

    @property
    def out_dim(self) -> int:
        return self.width * 2 ** (len(self.depths) - 1) * 4


@dataclass
class VisualCNNConfig(_ResNetConfig):
    """3D ResNet (single pathway, bottleneck). Defaults: ResNet-50, width 64 -> 2048-d clips."""

    width: int = 64
    depths: tuple[int, ...] = (3, 4, 6, 3)
    stem_temporal_kernel: int = 5
    temporal_kernels: tuple[int, ...] = (1, 1, 3, 3)  # temporal kernel of each stage's first conv
    in_channels: int = 3


@dataclass
class AudioCNNConfig(_ResNetConfig):
    """2D ResNet over log-mel spectrograms, every k x k conv separable (k x 1 then 1 x k).
    Defaults: ResNet-50, width 32 -> 1024-d clips."""

    width: int = 32
    depths: tuple[int, ...] = (3, 4, 6, 3)
    strides: tuple[int, ...] = (2, 2, 2, 2)  # stride of each stage (the stem keeps full size)
    stem_kernel: int = 7


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
        for name, value, allowed in (
            ("fusion", self.fusion, FUSIONS),
            ("share_transformers", self.share_transformers, TRANSFORMER_SHARING),
            ("orthogonal_map", self.orthogonal_map, ORTHOGONAL_MAPS),
        ):
            if value not in allowed:
                raise ValueError(f"model.{name}={value!r}, expected one of {allowed}")
        t = self.transformer
        if t.hidden % t.n_heads:
            raise ValueError(f"hidden {t.hidden} is not divisible by n_heads {t.n_heads}")
        for name, cnn in (("visual", self.visual), ("audio", self.audio)):
            n = len(cnn.depths)
            other = cnn.temporal_kernels if name == "visual" else cnn.strides
            if len(other) != n:
                raise ValueError(f"model.{name}: {len(other)} per-stage values for {n} stages")

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
            key: from_params(sub, d.pop(key, None) or {})
            for key, sub in (("visual", VisualCNNConfig), ("audio", AudioCNNConfig),
                             ("transformer", TransformerConfig))
        }
        return from_params(cls, d, **parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_model_config(conf_source: str | Path = "conf", env: str | None = "local") -> ModelConfig:
    """The `model:` block of conf/base/parameters_model.yml deep-merged with conf/<env>/'s
    (as Kedro's soft merge does), without Kedro. A missing env file changes nothing."""
    from omegaconf import OmegaConf

    root = Path(conf_source)
    merged = OmegaConf.load(root / "base" / PARAMETERS_FILE)
    if env and env != "base" and (root / env / PARAMETERS_FILE).is_file():
        merged = OmegaConf.merge(merged, OmegaConf.load(root / env / PARAMETERS_FILE))
    return ModelConfig.from_dict(OmegaConf.to_container(merged, resolve=True)["model"])

"""Training library (no Kedro): data over clip shards, pretraining objectives."""

from .data import AugmentConfig, ShardClipDataset, VideoBatchSampler, collate, make_generator, model_batch
from .losses import (
    CPPHead,
    LossConfig,
    MEPHead,
    PretrainingObjective,
    cpp_loss,
    cpp_pairs,
    cpp_summary,
    mask_positions,
    mep_loss,
)

__all__ = [
    "AugmentConfig", "CPPHead", "LossConfig", "MEPHead", "PretrainingObjective",
    "ShardClipDataset", "VideoBatchSampler", "collate", "cpp_loss", "cpp_pairs", "cpp_summary",
    "make_generator", "mask_positions", "mep_loss", "model_batch",
]

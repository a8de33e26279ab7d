"""Training library (no Kedro): batch sampling over videos, pretraining objectives (MEP, CPP),
the loop, checkpoints and the distributed launch. Clip data comes from `pemt_pipeline.features`."""

from .data import VideoBatchSampler
from .losses import (
    LossConfig,
    MEPHead,
    PretrainingObjective,
    cpp_loss,
    cpp_pairs,
    mask_positions,
    mep_loss,
)
from .optim import weight_decay_groups

__all__ = [
    "LossConfig", "MEPHead", "PretrainingObjective", "VideoBatchSampler", "cpp_loss", "cpp_pairs",
    "mask_positions", "mep_loss", "weight_decay_groups",
]

"""Fine-tuning library (no Kedro): the paper's downstream protocols (METHOD.md section 5) on a model
file or a random initialisation, test-time views (clips x spatial crops), and prediction.

Protocols: `video` (Kinetics-Sounds: the whole model on all clips of a video, the authors' two heads),
`visual_cnn` (UCF101: the visual CNN on single clips); the ESC-50 protocol (k-fold linear evaluation of
the frozen audio CNN) is `pemt_pipeline.evaluation.audio.audio_kfold`. Training runs on the shared
pretraining loop (`pemt_pipeline.training.loop.fit`)."""

from .config import INITS, PROTOCOLS, FinetuneConfig, FinetuneRun, ProtocolConfig
from .data import SingleClipDataset, ViewDataset, crop_offsets, crop_views, select_clips
from .predict import PredictConfig, predict_videos, top_k_table
from .protocols import headline, run_protocol
from .scoring import Scores, score_metrics, view_scores
from .train import FinetuneInputs, finetune, finetune_inputs, run_finetuning

__all__ = [
    "INITS", "PROTOCOLS", "FinetuneConfig", "FinetuneInputs", "FinetuneRun", "PredictConfig", "ProtocolConfig",
    "Scores", "SingleClipDataset", "ViewDataset", "crop_offsets", "crop_views", "finetune", "finetune_inputs",
    "headline", "predict_videos", "run_finetuning", "run_protocol", "score_metrics", "select_clips", "top_k_table",
    "view_scores",
]

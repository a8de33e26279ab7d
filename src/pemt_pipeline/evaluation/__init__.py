"""Evaluation library (no Kedro): frozen features, linear probe, cross-modal retrieval, audio
downstream."""

from .features import VideoFeatures, pair_scores, video_features
from .probe import ProbeConfig, classification_metrics, fit_probe, linear_probe, probe_scores
from .retrieval import cosine_scores, ranks, retrieval_metrics

__all__ = [
    "ProbeConfig", "VideoFeatures", "classification_metrics", "cosine_scores", "fit_probe",
    "linear_probe", "pair_scores", "probe_scores", "ranks", "retrieval_metrics", "video_features",
]

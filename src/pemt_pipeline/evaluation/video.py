"""Video-level evaluation of a trained model against its random initialisation (no Kedro):
linear probe per stream on the labelled splits, CPP-based audio-visual retrieval on held-out videos."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pemt_pipeline.configs import DEVICE, NON_EMPTY, at_least, each, from_params, require
from pemt_pipeline.models import random_model
from pemt_pipeline.models import TrainedModel
from pemt_pipeline.features.dataset import AugmentConfig

from .features import VideoFeatures, pair_scores, video_features
from .probe import ProbeConfig, linear_probe
from .retrieval import RETRIEVAL_DIRECTIONS, retrieval_metrics


@dataclass(frozen=True)
class VideoEvalConfig:
    """train_splits / test_splits: manifest splits the probe trains and scores on (retrieval uses
    the test splits); baseline_seed: seed of the randomly initialised baseline model;
    retrieval_ks: the k of recall@k; retrieval_max_videos: pair scoring costs n^2 pairs, so at
    most this many test videos (the first in manifest order); batch_size, device, progress."""

    train_splits: tuple[str, ...] = ("train",)
    test_splits: tuple[str, ...] = ("test",)
    baseline_seed: int = 0
    retrieval_ks: tuple[int, ...] = (1, 5, 10)
    retrieval_max_videos: int = 256
    batch_size: int = 8
    device: str = "auto"
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoEvalConfig:
        return from_params(cls, d, "evaluation", ignore=("probe", "audio"))

    def validate(self) -> None:
        """Ranges; ValueError naming `evaluation.<key>`."""
        require("evaluation", self, train_splits=each(NON_EMPTY), test_splits=each(NON_EMPTY),
                baseline_seed=at_least(0), retrieval_ks=each(at_least(1)), retrieval_max_videos=at_least(2),
                batch_size=at_least(1), device=DEVICE)


def labelled_splits(manifest: pd.DataFrame, cfg: VideoEvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row masks of the probe's train and test videos (labelled ones only), with clear errors."""
    labelled = manifest["label"].notna().to_numpy() if "label" in manifest else np.zeros(len(manifest), bool)
    train = manifest["split"].isin(cfg.train_splits).to_numpy() & labelled
    test = manifest["split"].isin(cfg.test_splits).to_numpy() & labelled
    for name, mask, splits in (("train", train, cfg.train_splits), ("test", test, cfg.test_splits)):
        if not mask.any():
            raise ValueError(f"no labelled video in the {name} split(s) {list(splits)} of the manifest "
                             f"(splits present: {sorted(manifest['split'].unique())})")
    return train, test


def model_features(trained: TrainedModel, manifest: pd.DataFrame, augment: AugmentConfig,
                   cfg: VideoEvalConfig) -> dict[str, VideoFeatures]:
    """Features of the trained model and of the same configuration randomly initialised."""
    baseline = random_model(trained.model.cfg, cfg.baseline_seed)
    return {name: video_features(model, manifest, augment, cfg.batch_size, cfg.device, cfg.progress)
            for name, model in (("pretrained", trained.model), ("random_init", baseline))}


def probe_report(features: dict[str, VideoFeatures], manifest: pd.DataFrame, cfg: VideoEvalConfig,
                 probe: ProbeConfig) -> dict[str, Any]:
    """{model: {stream: linear_probe metrics}} on the labelled train/test splits."""
    train, test = labelled_splits(manifest, cfg)
    y = manifest["label"].astype(str).to_numpy()
    return {name: {stream: linear_probe(x[train], y[train], x[test], y[test], probe)
                   for stream, x in f.pooled.items()}
            for name, f in features.items()}


def retrieval_report(trained: TrainedModel, features: VideoFeatures, manifest: pd.DataFrame,
                     cfg: VideoEvalConfig) -> dict[str, Any]:
    """video->audio and audio->video retrieval among the held-out videos, ranked by the CPP head."""
    if trained.cpp_head is None:
        raise ValueError("the model file holds no CPP head, which retrieval ranks by: re-export it "
                         "with the training pipeline")
    rows = np.flatnonzero(manifest["split"].isin(cfg.test_splits).to_numpy())[:cfg.retrieval_max_videos]
    if len(rows) < 2:
        raise ValueError(f"retrieval needs at least 2 videos in splits {list(cfg.test_splits)}, found {len(rows)}")
    scores = pair_scores(trained.model, trained.cpp_head, features, rows, cfg.device)  # [video, audio]
    n = len(scores)
    matched = np.diag(scores)
    mismatched = scores[~np.eye(n, dtype=bool)]
    video_to_audio, audio_to_video = RETRIEVAL_DIRECTIONS
    return {video_to_audio: retrieval_metrics(scores, cfg.retrieval_ks),
            audio_to_video: retrieval_metrics(scores.T, cfg.retrieval_ks),
            "cpp_balanced_accuracy": float(0.5 * ((matched > 0).mean() + (mismatched <= 0).mean())),
            "cpp_auc": pair_auc(matched, mismatched),
            "n_videos": n}


def pair_auc(matched: np.ndarray, mismatched: np.ndarray) -> float:
    """ROC AUC of the CPP scores: the chance that a matched pair outscores a mismatched one (ties
    count half); 0.5 = chance. Unlike balanced accuracy it does not depend on where the head puts
    its decision threshold."""
    m, x = np.asarray(matched, float)[:, None], np.asarray(mismatched, float)[None, :]
    return float(((m > x).sum() + 0.5 * (m == x).sum()) / (m.size * x.size))


def headline_metrics(probe: dict[str, Any], retrieval: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers (flat, for `dvc metrics`): probe top-1 per model and stream, retrieval."""
    out: dict[str, Any] = {}
    for model, streams in probe.items():
        for stream, m in streams.items():
            out[f"probe_top1/{model}/{stream}"] = m["top1"]
        out["probe_chance_top1"] = next(iter(streams.values()))["chance_top1"]
    for direction in RETRIEVAL_DIRECTIONS:
        for key, value in retrieval[direction].items():
            if key != "n":
                out[f"retrieval/{direction}/{key}"] = value
    out["retrieval/cpp_balanced_accuracy"] = retrieval["cpp_balanced_accuracy"]
    out["retrieval/cpp_auc"] = retrieval["cpp_auc"]
    return out

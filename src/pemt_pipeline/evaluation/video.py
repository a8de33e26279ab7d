"""Video-level evaluation of a trained model against its random initialisation (no Kedro):
linear probe per stream on the labelled splits, CPP-based audio-visual retrieval on held-out videos.

An unlabelled collection (pretraining data often is) has no probe: `probe_report(...,
skip_unlabelled=True)` then returns ``{"skipped": "<why>"}`` (`SKIPPED`) instead of raising, and
`headline_metrics` carries that reason as ``"probe": {"skipped": ...}`` beside the retrieval numbers,
which need no labels. Likewise a model without a CPP head (an imported checkpoint, a fine-tuned model)
has no retrieval: `retrieval_report(..., skip_without_head=True)` gives ``{"skipped": "<why>"}``."""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)

SKIPPED = "skipped"  # the key of a probe or retrieval report that did not run, and of its reason


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


def _labelled_masks(manifest: pd.DataFrame, cfg: VideoEvalConfig) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Row masks of the probe's train and test videos (labelled ones only) and why the probe cannot
    run on them (None when it can)."""
    labelled = manifest["label"].notna().to_numpy() if "label" in manifest else np.zeros(len(manifest), bool)
    train = manifest["split"].isin(cfg.train_splits).to_numpy() & labelled
    test = manifest["split"].isin(cfg.test_splits).to_numpy() & labelled
    for name, mask, splits in (("train", train, cfg.train_splits), ("test", test, cfg.test_splits)):
        if not mask.any():
            return train, test, (f"no labelled videos in the {name} split(s) {list(splits)}: the linear probe "
                                 f"needs labels ({int(labelled.sum())} of {len(manifest)} manifest videos are "
                                 f"labelled; splits present: {sorted(manifest['split'].unique())})")
    return train, test, None


def labelled_splits(manifest: pd.DataFrame, cfg: VideoEvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row masks of the probe's train and test videos (labelled ones only); ValueError saying why
    when either is empty."""
    train, test, skipped = _labelled_masks(manifest, cfg)
    if skipped:
        raise ValueError(skipped)
    return train, test


def model_features(trained: TrainedModel, manifest: pd.DataFrame, augment: AugmentConfig,
                   cfg: VideoEvalConfig) -> dict[str, VideoFeatures]:
    """Features of the trained model and of the same configuration randomly initialised."""
    baseline = random_model(trained.model.cfg, cfg.baseline_seed)
    return {name: video_features(model, manifest, augment, cfg.batch_size, cfg.device, cfg.progress)
            for name, model in (("pretrained", trained.model), ("random_init", baseline))}


def probe_report(features: dict[str, VideoFeatures], manifest: pd.DataFrame, cfg: VideoEvalConfig,
                 probe: ProbeConfig, skip_unlabelled: bool = False) -> dict[str, Any]:
    """{model: {stream: linear_probe metrics}} on the labelled train/test splits. Without labelled
    videos in either: a ValueError, or with `skip_unlabelled` a logged warning and
    ``{"skipped": "<why>"}``."""
    train, test, skipped = _labelled_masks(manifest, cfg)
    if skipped and skip_unlabelled:
        logger.warning("linear probe skipped: %s", skipped)
        return {SKIPPED: skipped}
    if skipped:
        raise ValueError(skipped)
    y = manifest["label"].astype(str).to_numpy()
    return {name: {stream: linear_probe(x[train], y[train], x[test], y[test], probe)
                   for stream, x in f.pooled.items()}
            for name, f in features.items()}


def retrieval_report(trained: TrainedModel, features: VideoFeatures, manifest: pd.DataFrame,
                     cfg: VideoEvalConfig, skip_without_head: bool = False) -> dict[str, Any]:
    """video->audio and audio->video retrieval among the held-out videos, ranked by the CPP head.
    A model without one: a ValueError, or with `skip_without_head` a logged warning and
    ``{"skipped": "<why>"}``."""
    if trained.cpp_head is None:
        why = ("the model holds no CPP head (Correct Pair Prediction), which retrieval ranks pairs by: a model "
               "pretrained here has one; an imported or fine-tuned model file does not")
        if not skip_without_head:
            raise ValueError(why)
        logger.warning("retrieval skipped: %s", why)
        return {SKIPPED: why}
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
    """Headline numbers (flat, for `dvc metrics`): probe top-1 per model and stream, retrieval (each
    ``{"skipped": why}`` under "probe" / "retrieval" when it did not run)."""
    out: dict[str, Any] = {}
    if SKIPPED in probe:
        out["probe"] = {SKIPPED: probe[SKIPPED]}
    else:
        for model, streams in probe.items():
            for stream, m in streams.items():
                out[f"probe_top1/{model}/{stream}"] = m["top1"]
            out["probe_chance_top1"] = next(iter(streams.values()))["chance_top1"]
    if SKIPPED in retrieval:
        out["retrieval"] = {SKIPPED: retrieval[SKIPPED]}
        return out
    for direction in RETRIEVAL_DIRECTIONS:
        for key, value in retrieval[direction].items():
            if key != "n":
                out[f"retrieval/{direction}/{key}"] = value
    out["retrieval/cpp_balanced_accuracy"] = retrieval["cpp_balanced_accuracy"]
    out["retrieval/cpp_auc"] = retrieval["cpp_auc"]
    return out

"""Predictions of a fine-tuned model on ingested videos: the top-k classes per video (no Kedro)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pemt_pipeline.configs import DEVICE, NON_EMPTY, at_least, from_params, optional, require
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.models import FinetunedModel

from .scoring import view_scores


@dataclass(frozen=True)
class PredictConfig:
    """``predict:`` (conf/base/parameters_predict.yml documents each key)."""

    shard_dir: str = "data/07_model_output/predict/shards"
    top_k: int = 5
    test_clips: int | None = None
    test_crops: int = 3
    batch_size: int = 4
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True

    CATALOG_KEYS = ("source_dir", "labels_csv", "model")  # runtime parameters the catalog reads

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> PredictConfig:
        return from_params(cls, params, "predict", ignore=cls.CATALOG_KEYS)

    def validate(self) -> None:
        one = at_least(1)
        require("predict", self, shard_dir=NON_EMPTY, top_k=one, test_clips=optional(one), test_crops=one,
                batch_size=one, device=DEVICE, num_workers=at_least(0))


def top_k_table(video_scores: np.ndarray, manifest: pd.DataFrame, classes: list[str], k: int) -> pd.DataFrame:
    """One row per video: video_id, path, label_1, score_1, ..., label_k, score_k (k capped at the
    number of classes; best first, ties in class order)."""
    k = min(k, len(classes))
    order = np.argsort(-video_scores, axis=1, kind="stable")[:, :k]  # [n, k]
    table = pd.DataFrame({"video_id": manifest["video_id"].to_numpy(), "path": manifest["source_path"].to_numpy()})
    names = np.asarray(classes, dtype=object)
    for j in range(k):
        table[f"label_{j + 1}"] = names[order[:, j]]
        table[f"score_{j + 1}"] = np.take_along_axis(video_scores, order[:, j:j + 1], axis=1)[:, 0].astype(float)
    return table


def predict_videos(finetuned: FinetunedModel, manifest: pd.DataFrame, augment: AugmentConfig,
                   cfg: PredictConfig) -> pd.DataFrame:
    """The top-k table of every video of `manifest` (video-level scores: `scoring.view_scores`); an
    empty manifest (every file rejected) gives an empty table with the columns."""
    k = min(cfg.top_k, len(finetuned.classes))
    if manifest.empty:
        columns = ["video_id", "path"] + [f"{c}_{j + 1}" for j in range(k) for c in ("label", "score")]
        return pd.DataFrame(columns=columns)
    scores = view_scores(finetuned, manifest, augment, cfg.test_crops, cfg.test_clips, cfg.batch_size, cfg.device,
                         cfg.num_workers, keep_views=False, progress=cfg.progress)
    return top_k_table(scores.video, manifest, finetuned.classes, k)

"""Nodes of the `report` pipeline (wiring only; the work is `pemt_pipeline.evaluation.comparison`
and `pemt_pipeline.reporting`): train and evaluate each fusion/sharing variant under the same data,
seeds and budget, then render the comparison."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pemt_pipeline.evaluation import comparison
from pemt_pipeline.evaluation.probe import ProbeConfig
from pemt_pipeline.evaluation.video import VideoEvalConfig
from pemt_pipeline.features import ClipEmbeddings
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.media.shards import ShardStore
from pemt_pipeline.reporting import Report, render_report
from pemt_pipeline.training.refresh import RefreshConfig


def variant_params(model: dict[str, Any], training: dict[str, Any], report: dict[str, Any],
                   variant: dict[str, Any], name: str) -> dict[str, Any]:
    return comparison.variant_params(model, training, report, variant, name)


def train_variant(manifest: pd.DataFrame, clip_shards: ShardStore, clip_embeddings: ClipEmbeddings,
                  negatives_table: pd.DataFrame, settings: dict[str, Any], negatives_params: dict[str, Any],
                  embedding_params: dict[str, Any]) -> list[dict[str, Any]]:
    """`clip_shards` orders the node after ingestion; the manifest names its shards; the negatives
    and embedding parameters are those of the negative table's refreshes."""
    return comparison.train_variant(manifest, clip_embeddings.clips, negatives_table, settings,
                                    RefreshConfig.from_params(negatives_params, embedding_params))


def evaluate_variant(runs: list[dict[str, Any]], manifest: pd.DataFrame, settings: dict[str, Any],
                     evaluation: dict[str, Any], augment: dict[str, Any]) -> dict[str, Any]:
    return comparison.evaluate_variant(runs, manifest, settings, VideoEvalConfig.from_dict(evaluation),
                                       ProbeConfig.from_dict(evaluation.get("probe")), AugmentConfig.from_dict(augment))


def collect_results(manifest: pd.DataFrame, report: dict[str, Any], training: dict[str, Any],
                    evaluation: dict[str, Any], **variants: dict[str, Any]) -> dict[str, Any]:
    return comparison.collect_results(manifest, report, training, evaluation, **variants)


def render(fusion_results: dict[str, Any] | None, pruning_results: dict[str, Any] | None,
           finetune_results: dict[str, Any] | None) -> Report:
    """The fusion comparison, the pruning and the fine-tuning sections, each when its results exist
    (None: its pipeline has not run yet)."""
    return render_report(fusion_results, pruning_results, finetune=finetune_results)

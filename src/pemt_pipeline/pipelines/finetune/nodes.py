"""Nodes of the `finetune` pipeline (wiring only; the work is `pemt_pipeline.finetuning` and, for the
ESC-50 protocol, `pemt_pipeline.evaluation.audio.audio_kfold`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pemt_pipeline.evaluation.audio import audio_kfold, kfold_headline
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.finetuning import FinetuneConfig, headline, run_protocol
from pemt_pipeline.media.ingest import IngestConfig
from pemt_pipeline.media.shards import ShardStore
from pemt_pipeline.models import FinetunedModel, TrainedModel


def _protocol(protocol: str, trained: TrainedModel, manifest: pd.DataFrame, params: dict[str, Any],
              augment: dict[str, Any]) -> tuple[FinetunedModel, dict[str, Any]]:
    cfg = FinetuneConfig.from_dict(params)
    return run_protocol(protocol, trained.model, cfg.model_file, manifest, AugmentConfig.from_dict(augment), cfg)


def finetune_video(trained: TrainedModel, manifest: pd.DataFrame, clip_shards: ShardStore, params: dict[str, Any],
                   augment: dict[str, Any]) -> tuple[FinetunedModel, dict[str, Any]]:
    """The Kinetics-Sounds protocol: the whole model on all clips of each video, from the model file and
    from random init (the manifest names the shards of `clip_shards`)."""
    return _protocol("video", trained, manifest, params, augment)


def finetune_visual_cnn(trained: TrainedModel, manifest: pd.DataFrame, clip_shards: ShardStore,
                        params: dict[str, Any], augment: dict[str, Any]) -> tuple[FinetunedModel, dict[str, Any]]:
    """The UCF101 protocol: the visual CNN on single clips, from the model file and from random init."""
    return _protocol("visual_cnn", trained, manifest, params, augment)


def audio_linear_kfold(trained: TrainedModel, params: dict[str, Any], ingestion: dict[str, Any]) -> dict[str, Any]:
    """The ESC-50 protocol: k-fold linear evaluation of the frozen audio CNN (and of its random init)
    over the folds of a labelled audio folder."""
    cfg = FinetuneConfig.from_dict(params)
    audio = cfg.audio_linear_kfold
    results = audio_kfold(trained.model, audio.root, audio.labels_csv, IngestConfig.from_dict(ingestion).mel,
                          audio.folder, audio.probe, cfg.baseline_seed if cfg.baseline else None, audio.folds)
    return {**results, "model_source": cfg.model_file}


def collect_results(video: dict[str, Any] | None, visual_cnn: dict[str, Any] | None,
                    audio: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every protocol's results that exist (those run now, or earlier: each names its model source) and
    their headline numbers, flat."""
    results = {name: r for name, r in (("video", video), ("visual_cnn", visual_cnn), ("audio_linear_kfold", audio))
               if r is not None}
    summary: dict[str, Any] = {}
    for name, r in results.items():
        summary.update(kfold_headline(r) if name == "audio_linear_kfold" else headline(r))
    return results, summary

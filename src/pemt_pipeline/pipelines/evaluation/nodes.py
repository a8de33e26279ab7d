"""Nodes of the `evaluation` pipeline (wiring only; the work is `pemt_pipeline.evaluation`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pemt_pipeline.evaluation.audio import AudioFolderConfig, audio_downstream, audio_headline
from pemt_pipeline.evaluation.features import VideoFeatures
from pemt_pipeline.evaluation.probe import ProbeConfig
from pemt_pipeline.evaluation.video import (VideoEvalConfig, headline_metrics, model_features, probe_report,
                                            retrieval_report)
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.media.ingest import IngestConfig
from pemt_pipeline.media.shards import ShardStore
from pemt_pipeline.models import TrainedModel


def extract_features(trained: TrainedModel, manifest: pd.DataFrame, clip_shards: ShardStore, params: dict[str, Any],
                     augment: dict[str, Any]) -> dict[str, VideoFeatures]:
    """Pooled per-video features of the trained model and of its random initialisation (the manifest
    names the shards of `clip_shards`)."""
    return model_features(trained, manifest, AugmentConfig.from_dict(augment), VideoEvalConfig.from_dict(params))


def probe_videos(features: dict[str, VideoFeatures], manifest: pd.DataFrame,
                 params: dict[str, Any]) -> dict[str, Any]:
    """Linear probe per model and stream: top-1, top-5, per-class accuracy, confusion matrix; on an
    unlabelled collection ``{"skipped": why}`` (the retrieval still runs)."""
    return probe_report(features, manifest, VideoEvalConfig.from_dict(params),
                        ProbeConfig.from_dict(params.get("probe")), skip_unlabelled=True)


def retrieve(trained: TrainedModel, features: dict[str, VideoFeatures], manifest: pd.DataFrame,
             params: dict[str, Any]) -> dict[str, Any]:
    """Audio->video and video->audio retrieval on the held-out videos, ranked by the CPP head; for a
    model without one ``{"skipped": why}`` (the probe still runs)."""
    return retrieval_report(trained, features["pretrained"], manifest, VideoEvalConfig.from_dict(params),
                            skip_without_head=True)


def summarise(probe: dict[str, Any], retrieval: dict[str, Any]) -> dict[str, Any]:
    return headline_metrics(probe, retrieval)


def audio_downstream_probe(trained: TrainedModel, params: dict[str, Any], ingestion: dict[str, Any]) -> dict[str, Any]:
    """Audio-only downstream (ESC-50 style): the audio branch of the trained model and of its random
    initialisation on a labelled audio folder, linear probe on each."""
    audio = dict(params["audio"])
    root, labels_csv = audio.pop("root"), audio.pop("labels_csv", None)
    return audio_downstream(trained.model, root, labels_csv, IngestConfig.from_dict(ingestion).mel,
                            AudioFolderConfig.from_dict(audio), ProbeConfig.from_dict(params.get("probe")),
                            VideoEvalConfig.from_dict(params).baseline_seed)


def summarise_audio(audio: dict[str, Any]) -> dict[str, Any]:
    return audio_headline(audio)

"""Nodes of the `evaluation` pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pemt_pipeline.evaluation.audio import AudioFolderConfig, audio_probe
from pemt_pipeline.evaluation.probe import ProbeConfig
from pemt_pipeline.evaluation.retrieval import RETRIEVAL_DIRECTIONS
from pemt_pipeline.models import random_model
from pemt_pipeline.media.ingest import IngestConfig
from pemt_pipeline.media.shards import ShardStore
from pemt_pipeline.evaluation.video import (VideoEvalConfig, model_features, probe_report,
                                            retrieval_report)
from pemt_pipeline.evaluation.features import VideoFeatures
from pemt_pipeline.models import TrainedModel
from pemt_pipeline.features.dataset import AugmentConfig


def extract_features(trained: TrainedModel, manifest: pd.DataFrame, clip_shards: ShardStore, params: dict[str, Any],
                     augment: dict[str, Any]) -> dict[str, VideoFeatures]:
    """Pooled per-video features of the trained model and of its random initialisation (the manifest
    names the shards of `clip_shards`)."""
    return model_features(trained, manifest, AugmentConfig.from_dict(augment), VideoEvalConfig.from_dict(params))


def probe_videos(features: dict[str, VideoFeatures], manifest: pd.DataFrame,
                 params: dict[str, Any]) -> dict[str, Any]:
    """Linear probe per model and stream: top-1, top-5, per-class accuracy, confusion matrix."""
    return probe_report(features, manifest, VideoEvalConfig.from_dict(params),
                        ProbeConfig.from_dict(params.get("probe")))


def retrieve(trained: TrainedModel, features: dict[str, VideoFeatures], manifest: pd.DataFrame,
             params: dict[str, Any]) -> dict[str, Any]:
    """Audio->video and video->audio retrieval on the held-out videos, ranked by the CPP head."""
    return retrieval_report(trained, features["pretrained"], manifest, VideoEvalConfig.from_dict(params))


def summarise_audio(audio: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of the audio downstream task (flat, for `dvc metrics`)."""
    out = {f"audio_probe_top1/{model}/{stream}": m["top1"]
           for model, r in audio.items() for stream, m in r["streams"].items()}
    out["audio_probe_files"] = audio["pretrained"]["counts"]["featurised"]
    out["audio_probe_rejected"] = audio["pretrained"]["counts"]["rejected"]
    return out


def summarise(probe: dict[str, Any], retrieval: dict[str, Any]) -> dict[str, Any]:
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


def audio_downstream(trained: TrainedModel, params: dict[str, Any], ingestion: dict[str, Any]) -> dict[str, Any]:
    """Audio-only downstream (ESC-50 style): a labelled folder of audio files through the audio
    branch of the trained model and of its random initialisation, linear probe on each."""
    audio = dict(params["audio"])
    root, labels_csv = audio.pop("root"), audio.pop("labels_csv", None)
    if not Path(root).is_dir():
        raise FileNotFoundError(f"evaluation.audio.root {str(root)!r} is not a folder: point it at a labelled "
                                "audio folder (e.g. --params evaluation.audio.root=/data/urbansound8k)")
    labels_csv = labels_csv or str(Path(root) / "labels.csv")
    cfg = AudioFolderConfig.from_dict(audio)
    mel = IngestConfig.from_dict(ingestion).mel
    probe = ProbeConfig.from_dict(params.get("probe"))
    baseline = random_model(trained.model.cfg, VideoEvalConfig.from_dict(params).baseline_seed)
    return {name: audio_probe(model, root, labels_csv, mel, cfg, probe)
            for name, model in (("pretrained", trained.model), ("random_init", baseline))}

"""The fusion/sharing comparison (the `report` pipeline's work): each variant's model and training
parameters, its pretraining once per seed, and its evaluation, under the same data, seeds and
step budget; then all variants' results in one dict (`fusion_results`, read by `reporting`)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pandas as pd

from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.models import ModelConfig
from pemt_pipeline.profiling import PeakMemory
from pemt_pipeline.training.distributed import train_model
from pemt_pipeline.training.loop import prepare_inputs, training_configs
from pemt_pipeline.training.refresh import RefreshConfig

from .probe import ProbeConfig
from .video import VideoEvalConfig, model_features, probe_report, retrieval_report

MODEL_KEYS = ("fusion", "share_layers", "share_transformers", "rank")


def variant_params(model: dict[str, Any], training: dict[str, Any], report: dict[str, Any],
                   variant: dict[str, Any], name: str) -> dict[str, Any]:
    """The variant's model and training parameters: the base ones with the variant's model
    overrides, the report's step budget and its own checkpoint/dvclive folders."""
    unknown = sorted(set(variant) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"report.variants.{name}: unknown key(s) {unknown}; a variant sets {list(MODEL_KEYS)}")
    model = {**copy.deepcopy(model), **variant}
    training = copy.deepcopy(training)
    training.update(steps=report["steps"], checkpoint_dir=f"{report['checkpoint_root']}/{name}",
                    dvclive_dir=f"{report['dvclive_root']}/{name}", progress=report.get("progress", True))
    return {"name": name, "model": model, "training": training, "seeds": list(report["seeds"])}


def train_variant(manifest: pd.DataFrame, clips: pd.DataFrame, negatives_table: pd.DataFrame,
                  settings: dict[str, Any], refresh: RefreshConfig | None = None) -> list[dict[str, Any]]:
    """Pretrain the variant once per seed (each seed in its own checkpoint folder, resumed if a
    matching checkpoint exists), refreshing the negative table as the pretraining does (`refresh`:
    how, needed when training.refresh_negatives_every > 0) -> [{seed, trained, summary, peak_memory_mb}]."""
    runs = []
    model = ModelConfig.from_dict(settings["model"])
    base, loss, augment = training_configs(settings["training"])
    for seed in settings["seeds"]:
        training = dataclasses.replace(base, seed=seed, checkpoint_dir=f"{base.checkpoint_dir}/seed{seed}",
                                       dvclive_dir=f"{base.dvclive_dir}/seed{seed}")
        inputs = prepare_inputs(manifest, clips, negatives_table, model, loss, augment, training, refresh)
        with PeakMemory() as memory:
            trained, summary = train_model(inputs)
        runs.append({"seed": seed, "trained": trained, "summary": summary, "peak_memory_mb": memory.mb})
    return runs


def evaluate_variant(runs: list[dict[str, Any]], manifest: pd.DataFrame, settings: dict[str, Any],
                     cfg: VideoEvalConfig, probe: ProbeConfig, aug: AugmentConfig) -> dict[str, Any]:
    """Probe and retrieval per seed, with parameter counts, curves and costs (schema: the
    `pemt_pipeline.reporting` docstring)."""
    out = {"model": {k: settings["model"][k] for k in MODEL_KEYS},
           "parameters": runs[0]["trained"].model.parameter_counts(), "runs": []}
    for run in runs:
        features = model_features(run["trained"], manifest, aug, cfg)
        summary = run["summary"]
        history = summary.get("history", [])
        steps = max(1, summary["steps"] - (summary.get("resumed_from") or 0))
        out["runs"].append({
            "seed": run["seed"], "history": history,
            "train_seconds": summary["wall_seconds"], "step_seconds": summary["wall_seconds"] / steps,
            "clips_per_second": summary["final"].get("clips_per_second", float("nan")),
            "peak_memory_mb": run["peak_memory_mb"],
            "probe": probe_report(features, manifest, cfg, probe),
            "retrieval": retrieval_report(run["trained"], features["pretrained"], manifest, cfg)})
    return out


def collect_results(manifest: pd.DataFrame, report: dict[str, Any], training: dict[str, Any],
                    evaluation: dict[str, Any], **variants: dict[str, Any]) -> dict[str, Any]:
    """All variants' results and the shared setup in one JSON-able dict (`fusion_results`)."""
    labelled = manifest[manifest["label"].notna()]
    return {"config": {"steps": report["steps"], "seeds": list(report["seeds"]),
                       "batch_size": training["batch_size"],
                       "data": {"n_train_videos": int(labelled["split"].isin(evaluation["train_splits"]).sum()),
                                "n_test_videos": int(labelled["split"].isin(evaluation["test_splits"]).sum()),
                                "n_classes": int(labelled["label"].nunique())}},
            "variants": variants}

"""A fine-tuning protocol end to end (no Kedro): fine-tune from the given model and from the same
configuration randomly initialised (the baseline), score both on the test split, report them side by
side (METHOD.md section 5; `train` and `scoring` say how)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pemt_pipeline.evaluation.video import labelled_splits
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.models import FinetunedModel, PEMTModel, PrunedModel

from .config import FinetuneConfig, FinetuneRun
from .data import class_indices, training_classes
from .scoring import score_metrics, view_scores
from .train import finetune, finetune_inputs

RANDOM_INIT = "random init"
HISTORY_KEYS = ("step", "total", "concat", "sequence", "clip_top1", "lr")


def _training_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The loop's summary, its metric history cut to the keys a report plots."""
    history = [{k: h[k] for k in HISTORY_KEYS if k in h} for h in summary["history"]]
    return {"steps": summary["steps"], "resumed_from": summary["resumed_from"], "world_size": summary["world_size"],
            "device": summary["device"], "wall_seconds": summary["wall_seconds"],
            "first_loss": history[0]["total"] if history else None,
            "final_loss": history[-1]["total"] if history else None, "history": history,
            "checkpoint": summary["checkpoint"]}


def run_protocol(protocol: str, model: PEMTModel, source: str, manifest: pd.DataFrame, augment: AugmentConfig,
                 cfg: FinetuneConfig) -> tuple[FinetunedModel, dict[str, Any]]:
    """Fine-tune `model` (named `source` in the results) by `protocol` on the labelled videos of the
    train splits, and (finetune.baseline) its random initialisation (seed baseline_seed); score both on
    the labelled test videos. Returns the fine-tuned model and the results:

        protocol, model_source, classes, n_train_videos, n_test_videos, test_clips (null: all),
        test_crops, crop (pixels), and per initialisation ("pretrained", "random_init"):
            model_source, clip and video: `classification_metrics` (top1, top<k>, per_class, confusion,
            ...), views: {n_videos, n_views, clips_per_video (mean), crops}, training: the run's summary
            (steps, first_loss, final_loss, history, ...).
    """
    if isinstance(model, PrunedModel):
        raise ValueError(f"{source!r} is a pruned model file: fine-tuning starts from a model file, an imported "
                         "checkpoint or a training checkpoint")
    train, test = labelled_splits(manifest, cfg)
    train_videos, test_videos = manifest[train].reset_index(drop=True), manifest[test].reset_index(drop=True)
    classes = training_classes(train_videos)
    labels = class_indices(train_videos["label"], classes)
    block = cfg.protocol(protocol)
    results: dict[str, Any] = {"protocol": protocol, "model_source": source, "classes": classes,
                               "n_train_videos": len(train_videos), "n_test_videos": len(test_videos),
                               "test_clips": block.test_clips, "test_crops": block.test_crops, "crop": augment.crop}
    starts = {"pretrained": (model, source)}
    if cfg.baseline:
        starts["random_init"] = (None, RANDOM_INIT)
    finetuned = None
    for init, (start, name) in starts.items():
        inputs = finetune_inputs(FinetuneRun.of(cfg, protocol, init), train_videos, labels, classes, start, name,
                                 model.cfg, augment, cfg.baseline_seed)
        tuned, summary = finetune(inputs)
        scores = view_scores(tuned, test_videos, augment, block.test_crops, block.test_clips, block.eval_batch_size,
                             cfg.device, cfg.num_workers, progress=cfg.progress)
        per_video = scores.views_per_video
        results[init] = {"model_source": name, **score_metrics(scores, test_videos["label"], classes, cfg.top_k),
                         "views": {"n_videos": len(per_video), "n_views": int(per_video.sum()),
                                   "clips_per_video": float(np.mean(per_video) / block.test_crops),
                                   "crops": block.test_crops},
                         "training": _training_summary(summary)}
        finetuned = finetuned or tuned
    return finetuned, results


def headline(results: dict[str, Any]) -> dict[str, float]:
    """Flat numbers of one protocol's results (for `dvc metrics`): finetune/<protocol>/<init>/<level>_top1
    and _top<k>, and the final training loss."""
    out: dict[str, float] = {}
    protocol = results["protocol"]
    for init in ("pretrained", "random_init"):
        if init not in results:
            continue
        for level in ("clip", "video"):
            m = results[init][level]
            out[f"finetune/{protocol}/{init}/{level}_top1"] = m["top1"]
            out[f"finetune/{protocol}/{init}/{level}_top{m['top_k']}"] = m[f"top{m['top_k']}"]
        if results[init]["training"]["final_loss"] is not None:
            out[f"finetune/{protocol}/{init}/final_loss"] = results[init]["training"]["final_loss"]
    return out

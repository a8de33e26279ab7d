"""Fine-tuning runs on the shared training loop (`pemt_pipeline.training.loop.fit`: resume, DDP,
dvclive metrics, tqdm, bf16 autocast, crash-safe checkpoints in <checkpoint_dir>/<protocol>/<init>/last.pt).

A run fine-tunes one protocol from one initialisation (the given model, or the same configuration
randomly initialised with `baseline_seed`):
- `video`: the whole model on all clips of each video; loss = cross-entropy of the concat head +
  cross-entropy of the sequence head, each averaged over the batch's real clips (every clip carries
  its video's label), as the authors' Kinetics-Sounds protocol. The [MASK] embeddings (pretraining
  only) are frozen.
- `visual_cnn`: the visual CNN and its head on one random clip per video (the UCF101 protocol); the
  rest of the model is frozen (and not run).
Optimiser: Adam (AMSGrad by default) with two learning rates: `finetune_lr` for the model's
parameters, `head_lr` for the new head; weight decay on weight matrices only
(`training.optim.weight_decay_groups`); the shared warm-up + cosine schedule (`training.loop.lr_factor`).
Each step's randomness (dropout) and each item's augmentation are seeded as in pretraining, so a
resumed run continues exactly as the uninterrupted one (CPU, deterministic algorithms).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from pemt_pipeline.features.dataset import AugmentConfig, collate
from pemt_pipeline.models import (ClassifierConfig, FinetunedModel, ModelConfig, PEMTModel, build_classifier,
                                  load_state, model_from_state, random_model)
from pemt_pipeline.training.data import VideoBatchSampler
from pemt_pipeline.training.distributed import launch
from pemt_pipeline.training.loop import RankContext, Trainer, fit, lr_factor, prepare_process
from pemt_pipeline.training.optim import weight_decay_groups

from .config import FinetuneRun
from .data import LabelledVideos, SingleClipDataset, labelled_fingerprint


@dataclass
class FinetuneInputs:
    """Everything a fine-tuning worker needs (picklable: sent to DDP workers). Read by the shared loop
    as `train` (its config), `model`, `augment` and `fingerprint`."""

    manifest: pd.DataFrame  # the training videos
    labels: np.ndarray  # int64 [n_videos]: class index of each
    classes: list[str]
    source_state: dict[str, Tensor] | None  # the initial model's state dict; None = random init
    source: str  # what it is, named in results (a model file path or "random init")
    baseline_seed: int  # seed of the random initialisation (source_state None)
    model: ModelConfig
    augment: AugmentConfig
    train: FinetuneRun
    fingerprint: str  # of the training data and the initial weights: resuming needs the same


def state_hash(state: dict[str, Tensor]) -> str:
    """A hash of a state dict's names and values."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def finetune_inputs(run: FinetuneRun, manifest: pd.DataFrame, labels: np.ndarray, classes: list[str],
                    model: PEMTModel | None, source: str, model_cfg: ModelConfig, augment: AugmentConfig,
                    baseline_seed: int = 0) -> FinetuneInputs:
    """The inputs of one run: from `model`'s weights, or (None) a random init of `model_cfg`."""
    state = None if model is None else {k: v.detach().cpu() for k, v in model.state_dict().items()}
    origin = state_hash(state) if state is not None else f"random init {baseline_seed}"
    return FinetuneInputs(manifest.reset_index(drop=True), np.asarray(labels, dtype=np.int64), list(classes), state,
                          source, baseline_seed, model_cfg, augment, run,
                          labelled_fingerprint(manifest, labels, origin, *classes))


class ClassifierStep(nn.Module):
    """A model and its new head: the step module the shared loop trains (forward(batch, generator) ->
    (loss, logs)) and checkpoints (with the head's configuration, so a checkpoint alone rebuilds the
    fine-tuned model: `finetuned_from_checkpoint`)."""

    def __init__(self, model: PEMTModel, classifier: nn.Module):
        super().__init__()
        self.model, self.classifier = model, classifier

    def checkpoint_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "classifier": self.classifier.state_dict(),
                "classifier_config": self.classifier.cfg.to_dict()}

    def load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.classifier.load_state_dict(ckpt["classifier"])


class VideoStep(ClassifierStep):
    """The `video` protocol: model + VideoClassifier."""

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None):
        mask = batch["clip_mask"]  # [B, T]
        concat, sequence = self.classifier(self.model(batch["video"], batch["audio"], mask))  # [B, T, C] each
        target = batch["label"][:, None].expand_as(mask)[mask]  # [N real clips]
        losses = {"concat": F.cross_entropy(concat[mask].float(), target),
                  "sequence": F.cross_entropy(sequence[mask].float(), target)}
        total = losses["concat"] + losses["sequence"]
        with torch.no_grad():
            scores = concat[mask].float().softmax(-1) + sequence[mask].float().softmax(-1)
            top1 = (scores.argmax(-1) == target).float().mean()
        logs = {"total": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()},
                "clip_top1": float(top1)}
        return total, logs


class VisualCNNStep(ClassifierStep):
    """The `visual_cnn` protocol: the visual CNN + VisualCNNClassifier on single clips."""

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None):
        logits = self.classifier(self.model.visual_cnn(batch["video"])).float()  # [B, C]
        loss = F.cross_entropy(logits, batch["label"])
        top1 = (logits.detach().argmax(-1) == batch["label"]).float().mean()
        return loss, {"total": float(loss.detach()), "clip_top1": float(top1)}


STEPS = {"video": VideoStep, "visual_cnn": VisualCNNStep}


def initial_model(inputs: FinetuneInputs) -> PEMTModel:
    """The run's starting weights: the source state, or the random init of `baseline_seed`."""
    if inputs.source_state is None:
        return random_model(inputs.model, inputs.baseline_seed)
    return model_from_state(inputs.source_state, inputs.model, inputs.source)


def freeze_unused(model: PEMTModel, protocol: str) -> None:
    """Parameters a protocol does not train get requires_grad=False (DDP needs every trained parameter
    used): visual_cnn trains only the visual CNN; video all but the [MASK] embeddings."""
    if protocol == "visual_cnn":
        model.requires_grad_(False)
        model.visual_cnn.requires_grad_(True)
    else:
        model.mask_token.requires_grad_(False)


def param_groups(step: ClassifierStep, cfg: FinetuneRun) -> list[dict[str, Any]]:
    """Adam groups: the model's trained parameters at finetune_lr, the head's at head_lr, each split
    into decayed (weight matrices) and not decayed (`weight_decay_groups`); empty groups dropped."""
    groups = []
    for module, lr in ((step.model, cfg.finetune_lr), (step.classifier, cfg.head_lr)):
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        groups += [{**g, "lr": lr} for g in weight_decay_groups(named, cfg.weight_decay) if g["params"]]
    return groups


def build(inputs: FinetuneInputs, ctx: RankContext) -> Trainer:
    """A fresh run: device and seeds, the initial model with a new head (seeded by `seed`), Adam with
    its schedule, the training dataset, its random batch sampler (this rank's slice) and loader."""
    cfg = inputs.train
    device = prepare_process(cfg, ctx)
    model = initial_model(inputs)
    freeze_unused(model, cfg.protocol)
    torch.manual_seed(cfg.seed)
    head = build_classifier(ClassifierConfig.for_model(cfg.protocol, model, len(inputs.classes), dropout=cfg.dropout))
    step = STEPS[cfg.protocol](model, head).to(device)
    optimizer = torch.optim.Adam(param_groups(step, cfg), amsgrad=cfg.amsgrad)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    data = LabelledVideos if cfg.protocol == "video" else SingleClipDataset
    dataset = data(inputs.manifest, inputs.labels, inputs.augment, seed=cfg.seed)
    sampler = VideoBatchSampler(len(dataset), cfg.batch_size, "random", None, cfg.batches_per_epoch, cfg.seed,
                                ctx.rank, ctx.world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda")
    return Trainer(inputs, ctx, device, step, optimizer, scheduler, dataset, sampler, loader)


def run_finetuning(inputs: FinetuneInputs, ctx: RankContext | None = None) -> dict[str, Any]:
    """Fine-tune (resuming from the run's last.pt when allowed); the loop's summary. Rank 0 writes the
    checkpoints and dvclive metrics."""
    cfg = inputs.train
    return fit(build(inputs, ctx or RankContext()), desc=f"finetune {cfg.protocol} ({cfg.init})")


def finetuned_from_checkpoint(ckpt: dict[str, Any], protocol: str, classes: list[str], source: str) -> FinetunedModel:
    """The fine-tuned model (eval mode) of a fine-tuning checkpoint."""
    model = model_from_state(ckpt, None, source)
    classifier = build_classifier(ClassifierConfig.from_dict(ckpt["classifier_config"]))
    classifier.load_state_dict(ckpt["classifier"])
    return FinetunedModel(model, classifier.eval(), protocol, list(classes), source)


def finetune(inputs: FinetuneInputs) -> tuple[FinetunedModel, dict[str, Any]]:
    """Fine-tune in this process or as DDP workers (`training.distributed.launch`); the final model
    comes from the checkpoint rank 0 wrote (with DDP the weights live in the workers)."""
    summary = launch(run_finetuning, inputs)
    ckpt = load_state(summary["checkpoint"], "fine-tuning checkpoint")
    return finetuned_from_checkpoint(ckpt, inputs.train.protocol, inputs.classes, inputs.source), summary

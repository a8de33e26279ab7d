"""The pruning run (METHOD.md section 6): the training checkpoint it starts from, training batches
embedded once by the frozen CNNs, and per FLOPs target a search, a fine-tuning and an export.

Only the Transformers are pruned: the CNN clip encoders stay frozen, so the training batches are
embedded once (`embed_batches`) and every search / fine-tuning step runs the Transformers alone
(`frozen_clip_encoders`). For every target a GatedModel around a copy of the trained model searches
the architecture with the pretraining objective (its MEP and CPP heads from the checkpoint) plus
the FLOPs penalty, is fine-tuned with that architecture fixed and exported as a plain PrunedModel.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader

from pemt_pipeline.devices import resolve_device, torch_threads
from pemt_pipeline.features.dataset import AugmentConfig, ShardClipDataset, collate, model_batch, videos_in_splits
from pemt_pipeline.models import PEMTModel, TrainedModel, trained_from_state
from pemt_pipeline.training.data import VideoBatchSampler
from pemt_pipeline.training.losses import LossConfig, PretrainingObjective

from .config import PruningConfig, partition_name
from .export import export
from .gated import GatedModel
from .search import finetune, search

logger = logging.getLogger(__name__)


def load_pruning_source(state: dict[str, Any], source: str) -> tuple[TrainedModel, dict[str, Tensor]]:
    """The trained model with its CPP head, and the state of the pretraining objective (MEP and CPP
    heads) of a loaded training checkpoint, or {} for a model file (e.g. an imported or fine-tuned
    one), which holds no objective: the search then starts the heads afresh (the CPP head from the
    file's when it has one) and trains them with the Transformers. `source` names the file."""
    if "objective" not in state:
        logger.warning("%s holds no pretraining objective (it is a model file, not a training checkpoint): the "
                       "MEP and CPP heads the search trains with start afresh", source)
    return trained_from_state(state, source), state.get("objective") or {}


@contextlib.contextmanager
def frozen_clip_encoders(model: PEMTModel) -> Iterator[PEMTModel]:
    """Inside the block the model's CNNs are a reshape [N, ...] -> [N, D], for batches that hold
    clip embeddings already (`embed_clips` then places them as the CNNs' outputs); restored after."""
    cnns = model.visual_cnn, model.audio_cnn
    model.visual_cnn, model.audio_cnn = nn.Flatten(1), nn.Flatten(1)
    try:
        yield model
    finally:
        model.visual_cnn, model.audio_cnn = cnns


@torch.no_grad()
def embed_batches(base: TrainedModel, manifest: pd.DataFrame, cfg: PruningConfig,
                  augment: AugmentConfig) -> list[dict[str, Tensor]]:
    """`cfg.batches` training batches of the `cfg.splits` videos, drawn epoch after epoch as in
    training (random batches, augmentation), with the clips replaced by the trained CNNs'
    embeddings (eval mode): the CNNs are not pruned and stay frozen, so search and fine-tuning
    train the Transformers (with projections, token embeddings, objective heads) on these."""
    subset = videos_in_splits(manifest, cfg.splits, cfg.batch_size, "pruning.batch_size")
    device = resolve_device(cfg.device)
    model = base.model.eval().to(device)
    dataset = ShardClipDataset(subset, augment, train=True, seed=cfg.seed)
    sampler = VideoBatchSampler(len(dataset), cfg.batch_size, "random", seed=cfg.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    batches: list[dict[str, Tensor]] = []
    epoch = 0
    with torch_threads(cfg.threads):
        while len(batches) < cfg.batches:
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            for batch in loader:
                mask = batch["clip_mask"]
                inputs = model_batch(batch, device, augment)
                v, a = model.embed_clips(inputs["video"], inputs["audio"], inputs["clip_mask"])
                batches.append({"video": v.float().cpu(), "audio": a.float().cpu(), "clip_mask": mask,
                                "video_index": batch["video_index"]})
                if len(batches) == cfg.batches:
                    break
            epoch += 1
    model.cpu()
    return batches


def prune_one(base: TrainedModel, objective_state: dict[str, Tensor], batches: list[dict[str, Tensor]],
              target: float, loss: LossConfig, cfg: PruningConfig) -> tuple[TrainedModel, dict[str, Any]]:
    """Search, fine-tune and export a copy of `base` for one FLOPs target (base is left as it is).
    Returns the pruned model (base's CNNs) with its fine-tuned CPP head, and the logs."""
    device = resolve_device(cfg.device)
    model = copy.deepcopy(base.model).to(device)
    with torch.random.fork_rng():  # fresh heads (a model file) drawn the same every run
        torch.manual_seed(cfg.seed)
        objective = PretrainingObjective(model, loss)
    if objective_state:
        objective.load_state_dict(objective_state)
    elif base.cpp_head is not None:
        objective.cpp.load_state_dict(base.cpp_head.state_dict())
    objective.to(device)
    gated = GatedModel(model, init_score=cfg.init_score)
    start = time.perf_counter()
    with frozen_clip_encoders(gated):
        found = search(gated, batches, objective, cfg.search_config(target))
        searched = time.perf_counter()
        tuned = finetune(gated, batches, objective, cfg.finetune)
    pruned = export(gated).cpu().eval()
    cpp = copy.deepcopy(objective.cpp).cpu().eval()
    end = time.perf_counter()
    logger.info("pruned to FLOPs target %g: %.3f of the unpruned FLOPs (search %.0f s, fine-tuning %.0f s)",
                target, found["flops"], searched - start, end - searched)
    return TrainedModel(pruned, cpp), {
        "target": target, "flops": found["flops"], "architecture": tuned["architecture"],
        "search_history": found["history"], "finetune_history": tuned["history"],
        "search_seconds": round(searched - start, 2), "finetune_seconds": round(end - searched, 2)}


def prune_models(base: TrainedModel, objective_state: dict[str, Tensor], batches: list[dict[str, Tensor]],
                 cfg: PruningConfig, loss: LossConfig) -> tuple[dict[str, TrainedModel], dict[str, Any]]:
    """One pruned model per `cfg.targets` entry (named by `partition_name`), and their logs."""
    models, logs = {}, {}
    with torch_threads(cfg.threads):
        for target in cfg.targets:
            name = partition_name(target)
            models[name], logs[name] = prune_one(base, objective_state, batches, target, loss, cfg)
    return models, logs

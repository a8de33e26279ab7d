"""Pretraining loop: MEP + CPP with content-aware in-batch negatives, one process or DDP workers.

Every optimiser step consumes `grad_accum` batches of `batch_size` videos (the global batch; each
DDP rank takes its slice). The randomness of a step (MEP masks, CPP pairs, dropout) is seeded from
(seed, step, micro-batch, rank), and augmentations from (seed, epoch, video), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would (on CPU with deterministic algorithms).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pemt_pipeline.configs import (DEVICE, NON_EMPTY, above, at_least, between, each, from_params, one_of, optional,
                                   require)
from pemt_pipeline.features.embed import resolve_device
from pemt_pipeline.models import ModelConfig, PEMTModel
from pemt_pipeline.atomic import remove_stale_temporaries
from pemt_pipeline.training.checkpoint import (
    LAST,
    config_differences,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_aside,
    set_rng_state,
)
from pemt_pipeline.training.data import VARIANTS as BATCH_VARIANTS
from pemt_pipeline.training.data import AugmentConfig, ShardClipDataset, VideoBatchSampler, collate, derive_seed, model_batch
from pemt_pipeline.training.losses import LossConfig, PretrainingObjective

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainConfig:
    """Training parameters (``training:`` in conf/base/parameters_training.yml documents each)."""

    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    batches_per_epoch: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    clip_grad_norm: float = 1.0
    seed: int = 0
    deterministic: bool = True
    splits: tuple[str, ...] = ("train",)
    negatives: str = "content"
    device: str = "auto"
    bf16: bool = True
    compile: bool = False
    num_workers: int = 0
    checkpoint_dir: str = "data/06_models/checkpoints"
    checkpoint_every: int = 50
    resume: bool = True
    log_every: int = 10
    dvclive_dir: str = "dvclive/training"
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = "localhost:0"
    backend: str = "auto"
    progress: bool = True

    # fields that may change between a run and its resumption
    RUN_FIELDS = ("steps", "checkpoint_every", "log_every", "progress", "num_workers", "resume", "dvclive_dir",
                  "checkpoint_dir", "rdzv_endpoint", "device", "compile")

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> TrainConfig:
        return from_params(cls, params, "training")  # type checks, then validate()

    def validate(self) -> None:
        one = at_least(1)
        require("training", self, steps=one, batch_size=one, grad_accum=one, checkpoint_every=one, log_every=one,
                nproc_per_node=one, nnodes=one, batches_per_epoch=optional(one), lr=above(0),
                weight_decay=at_least(0), warmup_steps=at_least(0), min_lr_ratio=between(0, 1),
                clip_grad_norm=above(0), seed=at_least(0), splits=each(NON_EMPTY), negatives=one_of(BATCH_VARIANTS),
                device=DEVICE, num_workers=at_least(0), backend=one_of(("auto", "nccl", "gloo")),
                rdzv_endpoint=(lambda v: v.rpartition(":")[0] != "" and v.rpartition(":")[2].isdigit(), "host:port"),
                checkpoint_dir=NON_EMPTY, dvclive_dir=NON_EMPTY)

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUN_FIELDS}


@dataclass
class TrainInputs:
    """Everything a training worker needs (picklable, sent to DDP workers)."""

    manifest: pd.DataFrame  # the videos to train on (already filtered to `splits`)
    negatives: pd.DataFrame  # anchor, candidate, probability; clip ids renumbered for the subset:
    #   its real clips, video after video in manifest order (the dataset's numbering)
    clip_video_index: np.ndarray  # [n_clips] dataset index (video) of each training clip
    fingerprint: str  # of the training data (videos, their content, the negative table): resuming needs the same
    model: dict[str, Any]
    loss: dict[str, Any]
    augment: dict[str, Any]
    train: dict[str, Any]


def prepare_inputs(manifest: pd.DataFrame, clips: pd.DataFrame, negatives: pd.DataFrame, model: dict, loss: dict,
                   augment: dict, train: dict) -> TrainInputs:
    """Check that the manifest, the embedding store's clip table and the negative table agree, keep
    the training splits, and renumber clips for that subset (clear errors before any work)."""
    cfg = TrainConfig.from_dict(train)
    if manifest.empty:
        raise ValueError("the manifest is empty: ingest some videos first (kedro run --pipelines ingestion)")
    per_video = clips.groupby("video_id", sort=False).size()
    expected = manifest.set_index("video_id")["n_clips"]
    if set(per_video.index) != set(expected.index) or not (per_video.reindex(expected.index) == expected).all():
        raise ValueError("the clip embeddings (and so the negative table) were made for another manifest: "
                         "run the embedding and negatives pipelines again (kedro run --pipelines embedding,negatives)")
    subset = manifest[manifest["split"].isin(cfg.splits)].reset_index(drop=True)
    if len(subset) < cfg.batch_size:
        raise ValueError(f"{len(subset)} videos in splits {list(cfg.splits)}, fewer than training.batch_size "
                         f"({cfg.batch_size})")
    keep = clips["video_id"].isin(subset["video_id"]).to_numpy()
    new_id = np.full(len(clips), -1, dtype=np.int64)
    new_id[keep] = np.arange(int(keep.sum()))
    position = {v: i for i, v in enumerate(subset["video_id"])}
    clip_video_index = clips.loc[keep, "video_id"].map(position).to_numpy(np.int64)
    table = negatives.assign(anchor=new_id[negatives["anchor"]], candidate=new_id[negatives["candidate"]])
    table = table[(table["anchor"] >= 0) & (table["candidate"] >= 0)].copy()
    table["probability"] = table["probability"] / table.groupby("anchor")["probability"].transform("sum")
    table = table.reset_index(drop=True)
    return TrainInputs(subset, table, clip_video_index, data_fingerprint(subset, table), model, loss, augment, train)


def data_fingerprint(manifest: pd.DataFrame, negatives: pd.DataFrame) -> str:
    """A hash of what the training sees: its videos (ids, content hashes, clips) and the negative table."""
    digest = hashlib.sha256()
    columns = [c for c in ("video_id", "content_hash", "n_clips", "params_hash") if c in manifest]
    digest.update(pd.util.hash_pandas_object(manifest[columns], index=False).to_numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(negatives[["anchor", "candidate", "probability"]], index=False)
                  .to_numpy().tobytes())
    return digest.hexdigest()[:16]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to min_lr_ratio at `steps`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PretrainingStep(nn.Module):
    """Model + objective as one module (what DDP wraps): forward(batch, generator) -> (loss, logs)."""

    def __init__(self, model: PEMTModel, objective: PretrainingObjective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator):
        return self.objective(self.model, batch, generator)


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not biases, norms, embeddings' vectors, orthogonal generators)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        (decay if p.ndim >= 2 and "parametrizations" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class _Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _negative_sampler(inputs: TrainInputs, cfg: TrainConfig):
    if cfg.negatives != "content":
        return None
    from pemt_pipeline.sampling import NegativeSampler

    return NegativeSampler(inputs.negatives, inputs.clip_video_index, seed=cfg.seed)


def _all_finite(value: float, ctx: _Context, device: torch.device) -> bool:
    flag = torch.tensor([1.0 if math.isfinite(value) else 0.0], device=device)
    if ctx.world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _mean_logs(sums: dict[str, float], count: int, ctx: _Context, device: torch.device) -> dict[str, float]:
    keys = sorted(sums)
    values = torch.tensor([sums[k] / max(count, 1) for k in keys], dtype=torch.float64, device=device)
    if ctx.world_size > 1:
        dist.all_reduce(values)
        values /= ctx.world_size
    return dict(zip(keys, values.tolist()))


def run_training(inputs: TrainInputs, ctx: _Context | None = None) -> dict[str, Any]:
    """Train (resuming from `checkpoint_dir/last.pt` when allowed); returns the summary. Rank 0 writes
    the checkpoints, dvclive metrics and the final `last.pt`."""
    ctx = ctx or _Context()
    cfg = TrainConfig.from_dict(inputs.train)
    model_cfg = ModelConfig.from_dict(inputs.model)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and ctx.world_size > 1:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.manual_seed(cfg.seed)
    model = PEMTModel(model_cfg)
    objective = PretrainingObjective(model, LossConfig.from_dict(inputs.loss))
    step_module = PretrainingStep(model, objective).to(device)
    optimizer = torch.optim.AdamW(_param_groups(step_module, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))

    augment = AugmentConfig.from_dict(inputs.augment)
    dataset = ShardClipDataset(inputs.manifest, augment, train=True, seed=cfg.seed)
    sampler = VideoBatchSampler(len(dataset), cfg.batch_size, cfg.negatives,
                                _negative_sampler(inputs, cfg), cfg.batches_per_epoch, cfg.seed, ctx.rank,
                                ctx.world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda")

    ckpt_dir = Path(cfg.checkpoint_dir)
    step, resumed_from = 0, None
    ckpt = load_checkpoint(ckpt_dir / LAST) if cfg.resume and (ckpt_dir / LAST).is_file() else None
    if ckpt is not None:
        differ = [f"{key} ({was!r} in the checkpoint, {now!r} now)" for key, was, now in config_differences(
            {"training": ckpt.get("config") or {}, "model": ckpt.get("model_config") or {}},
            {"training": cfg.identity(), "model": model_cfg.to_dict()})]
        if ckpt.get("data") != inputs.fingerprint:
            differ.append("the training data (manifest, shard contents or negatives table)")
        if differ:
            if ctx.main:
                kept = set_aside(ckpt_dir / LAST, int(ckpt["step"]))
                logger.warning("%s was written with other parameters or data (%s): starting afresh. It is kept as "
                               "%s; to resume it, move it back to %s and run with the parameters and data it was "
                               "written with", ckpt_dir / LAST, "; ".join(differ), kept, ckpt_dir / LAST)
            ckpt = None
    if ckpt is not None:
        step_module.model.load_state_dict(ckpt["model"])
        step_module.objective.load_state_dict(ckpt["objective"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        sampler.load_state_dict(ckpt["sampler"])
        set_rng_state(ckpt["rng"])
        step, resumed_from = int(ckpt["step"]), int(ckpt["step"])
        logger.info("resuming training from %s at step %d", ckpt_dir / LAST, step)
    if ctx.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(ckpt_dir)

    ddp = step_module
    if ctx.world_size > 1:
        ddp = nn.parallel.DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(ddp) if cfg.compile else ddp
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")

    live = None
    if ctx.main:
        from dvclive import Live

        live = Live(dir=cfg.dvclive_dir, resume=resumed_from is not None, save_dvc_exp=False, dvcyaml=None)
    bpe = len(sampler)
    micro_done = step * cfg.grad_accum
    epoch = micro_done // bpe
    if resumed_from is None:
        sampler.set_epoch(epoch)
    bar = tqdm(total=cfg.steps, initial=step, desc="training", unit="step", disable=not (cfg.progress and ctx.main))
    sums, count, clips_seen, t_log = defaultdict(float), 0, 0, time.perf_counter()
    history: list[dict[str, float]] = []
    step_module.train()
    last_path = ckpt_dir / LAST

    def checkpoint() -> None:
        if micro_done % bpe == 0:  # at an epoch boundary the next epoch starts from the sampler's state now
            sampler.set_epoch(micro_done // bpe)
        if ctx.main:
            save_checkpoint(last_path, {
                "step": step, "model": step_module.model.state_dict(), "objective": step_module.objective.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "sampler": sampler.state_dict(batches_done=micro_done % bpe), "rng": rng_state(),
                "config": cfg.identity(), "model_config": model_cfg.to_dict(), "data": inputs.fingerprint})

    start_time = time.perf_counter()
    micro = micro_done % cfg.grad_accum
    while step < cfg.steps:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for batch in loader:
            batch = model_batch(batch, device, augment)
            torch.manual_seed(derive_seed(cfg.seed, step, micro, ctx.rank))  # dropout
            generator = torch.Generator().manual_seed(derive_seed(cfg.seed, step, micro, 1))  # same on all ranks
            last_micro = micro == cfg.grad_accum - 1
            sync = ddp.no_sync() if ctx.world_size > 1 and not last_micro else contextlib.nullcontext()
            with sync, autocast:
                loss, logs = forward(batch, generator)
            if not _all_finite(logs["total"], ctx, device):
                raise FloatingPointError(
                    f"the training loss became {logs['total']} at step {step} ({logs}); the last good checkpoint "
                    f"is {last_path if last_path.exists() else 'none (no checkpoint written yet)'}: lower "
                    "training.lr or check the data")
            (loss / cfg.grad_accum).backward()
            for k, v in logs.items():
                sums[k] += v
            count += 1
            clips_seen += int(batch["clip_mask"].sum()) * ctx.world_size
            micro_done += 1
            micro += 1
            if last_micro:
                grad_norm = nn.utils.clip_grad_norm_(step_module.parameters(), cfg.clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                micro = 0
                bar.update()
                if step % cfg.log_every == 0 or step == cfg.steps:
                    means = _mean_logs(sums, count, ctx, device)
                    elapsed = time.perf_counter() - t_log
                    means.update(lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm),
                                 clips_per_second=clips_seen / elapsed, step=step)
                    history.append(means)
                    if live is not None:
                        live.step = step
                        for k, v in means.items():
                            if k != "step":
                                live.log_metric(f"train/{k}", v)
                        live.next_step()
                    bar.set_postfix(loss=f"{means['total']:.3f}", clips_s=f"{means['clips_per_second']:.0f}")
                    sums, count, clips_seen, t_log = defaultdict(float), 0, 0, time.perf_counter()
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    checkpoint()
                if step >= cfg.steps:
                    break
        if micro_done % bpe == 0:
            epoch += 1
    bar.close()
    if live is not None:
        live.end()
    wall = time.perf_counter() - start_time
    return {"steps": step, "resumed_from": resumed_from, "wall_seconds": round(wall, 2),
            "world_size": ctx.world_size, "device": str(device), "final": history[-1] if history else {},
            "first": history[0] if history else {}, "history": history, "checkpoint": str(last_path)}



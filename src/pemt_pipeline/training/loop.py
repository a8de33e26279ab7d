"""Pretraining loop: MEP + CPP with content-aware in-batch negatives, one process or DDP workers.

Every optimiser step consumes `grad_accum` batches of `batch_size` videos (the global batch; each
DDP rank takes its slice). The randomness of a step (MEP masks, CPP pairs, dropout) is seeded from
(seed, step, micro-batch, rank), and augmentations from (seed, epoch, video), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would (on CPU with deterministic algorithms).

`run_training` in pieces: `build` (a `Trainer`: model, objective, optimiser, schedule, data) ->
`resume` (from checkpoint_dir/last.pt when it matches) -> `distribute` (DDP, torch.compile) ->
`train_step` until `steps`, with `log_metrics` every `log_every` and `checkpoint` every
`checkpoint_every` steps (and both at the end), and, every `refresh_negatives_every` steps,
`refresh_negatives` (the negative table from the current CNNs, `training/refresh.py`).

Test-only: PEMT_KILL_AFTER_CHECKPOINT=<N> SIGKILLs rank 0 right after the checkpoint of step N
(`pemt_pipeline.kill_points`; tests/test_training_chain.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from dvclive import Live
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pemt_pipeline.atomic import remove_stale_temporaries
from pemt_pipeline.configs import (DEVICE, NON_EMPTY, above, at_least, between, each, from_params, one_of, optional,
                                   require)
from pemt_pipeline.distributed import LaunchSettings, RankContext, rank_device
from pemt_pipeline.features.dataset import (AugmentConfig, ShardClipDataset, collate, derive_seed, model_batch,
                                            videos_in_splits)
from pemt_pipeline.kill_points import KILL_AFTER_CHECKPOINT, kill_at, kill_point
from pemt_pipeline.models import ModelConfig, PEMTModel
from pemt_pipeline.sampling import NegativeSampler
from pemt_pipeline.training import refresh as refreshing
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
from pemt_pipeline.training.data import VideoBatchSampler
from pemt_pipeline.training.losses import LossConfig, PretrainingObjective
from pemt_pipeline.training.optim import weight_decay_groups
from pemt_pipeline.training.refresh import RefreshConfig

logger = logging.getLogger(__name__)



REFRESH_STREAM = 7  # seed key of a refreshed table's negative sampler: derive_seed(seed, step, REFRESH_STREAM)


class LoopSettings(LaunchSettings):
    """What the shared loop (`fit`) and launcher read of a run's config dataclass besides its fields
    (pretraining's TrainConfig, fine-tuning's FinetuneRun): the world size and launch checks
    (`pemt_pipeline.distributed.LaunchSettings`) and the resume identity."""

    # fields that may change between a run and its resumption
    RUN_FIELDS = ("steps", "checkpoint_every", "log_every", "progress", "num_workers", "resume", "dvclive_dir",
                  "checkpoint_dir", "rdzv_endpoint", "device", "compile")

    def identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUN_FIELDS}


@dataclass(frozen=True)
class TrainConfig(LoopSettings):
    """Training parameters (``training:`` in conf/base/parameters_training.yml documents each; the
    defaults here are the same values, tests/training/test_training_loop.py checks that)."""

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
    refresh_negatives_every: int = 0  # off here (a refresh needs RefreshConfig); the project's YAML: 50
    device: str = "auto"
    bf16: bool = True
    compile: bool = False
    num_workers: int = 0
    checkpoint_dir: str = "data/06_models/checkpoints"  # the YAML's ${globals:paths.checkpoints}
    checkpoint_every: int = 50
    resume: bool = True
    log_every: int = 10
    dvclive_dir: str = "data/08_reporting/dvclive/training"
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = "localhost:0"
    backend: str = "auto"
    progress: bool = True

    SECTION = "training"  # the parameter section (named in resume messages)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> TrainConfig:
        return from_params(cls, params, "training")  # type checks, then validate()

    def validate(self) -> None:
        one = at_least(1)
        require("training", self, steps=one, batch_size=one, grad_accum=one, checkpoint_every=one, log_every=one,
                batches_per_epoch=optional(one), lr=above(0),
                weight_decay=at_least(0), warmup_steps=at_least(0), min_lr_ratio=between(0, 1),
                refresh_negatives_every=at_least(0),
                clip_grad_norm=above(0), seed=at_least(0), splits=each(NON_EMPTY), negatives=one_of(BATCH_VARIANTS),
                device=DEVICE, num_workers=at_least(0), checkpoint_dir=NON_EMPTY, dvclive_dir=NON_EMPTY)
        self.check_launch("training")


def training_configs(params: Mapping[str, Any] | None) -> tuple[TrainConfig, LossConfig, AugmentConfig]:
    """The YAML ``training:`` block as its configs: the ``loss:`` and ``augment:`` blocks (absent:
    their defaults) and the rest as TrainConfig. Unknown keys or bad values: a ValueError naming them."""
    params = dict(params or {})
    loss = LossConfig.from_dict(params.pop("loss", None) or {})
    augment = AugmentConfig.from_dict(params.pop("augment", None) or {})
    return TrainConfig.from_dict(params), loss, augment


@dataclass
class TrainInputs:
    """Everything a training worker needs (picklable, sent to DDP workers); configs already parsed."""

    manifest: pd.DataFrame  # the videos to train on (already filtered to `splits`)
    negatives: pd.DataFrame  # anchor, candidate, probability; clip ids renumbered for the subset:
    #   its real clips, video after video in manifest order (the dataset's numbering)
    clip_video_index: np.ndarray  # [n_clips] dataset index (video) of each training clip
    fingerprint: str  # of the training data (videos, their content, the negative table): resuming needs the same
    model: ModelConfig
    loss: LossConfig
    augment: AugmentConfig
    train: TrainConfig
    refresh: RefreshConfig | None = None  # how refreshes rebuild the table; None = no refresh


def prepare_inputs(manifest: pd.DataFrame, clips: pd.DataFrame, negatives: pd.DataFrame, model: ModelConfig,
                   loss: LossConfig, augment: AugmentConfig, train: TrainConfig,
                   refresh: RefreshConfig | None = None) -> TrainInputs:
    """Check that the manifest, the embedding store's clip table and the negative table agree, keep
    the training splits, and renumber clips for that subset (clear errors before any work).
    `refresh`: the negatives and embedding parameters, needed when training.refresh_negatives_every > 0
    (ignored, with a warning, for training.negatives: random, whose batches use no table)."""
    refresh = _refresh_settings(train, refresh)
    if manifest.empty:
        raise ValueError("the manifest is empty: ingest some videos first (kedro run --pipelines ingestion)")
    per_video = clips.groupby("video_id", sort=False).size()
    expected = manifest.set_index("video_id")["n_clips"]
    if set(per_video.index) != set(expected.index) or not (per_video.reindex(expected.index) == expected).all():
        raise ValueError("the clip embeddings (and so the negative table) were made for another manifest: "
                         "run the embedding and negatives pipelines again (kedro run --pipelines embedding,negatives)")
    subset = videos_in_splits(manifest, train.splits, train.batch_size, "training.batch_size")
    keep = clips["video_id"].isin(subset["video_id"]).to_numpy()
    new_id = np.full(len(clips), -1, dtype=np.int64)
    new_id[keep] = np.arange(int(keep.sum()))
    position = {v: i for i, v in enumerate(subset["video_id"])}
    clip_video_index = clips.loc[keep, "video_id"].map(position).to_numpy(np.int64)
    table = _renumbered(negatives, new_id)
    extra = (refreshing.identity_bytes(refresh),) if refresh is not None else ()
    return TrainInputs(subset, table, clip_video_index, data_fingerprint(subset, table, *extra), model, loss, augment,
                       train, refresh)


def _renumbered(negatives: pd.DataFrame, new_id: np.ndarray) -> pd.DataFrame:
    """The table's rows between kept clips (new_id >= 0), ids renumbered, probabilities renormalised
    per anchor; numpy columns, so a large (e.g. partitioned) table is copied at most once."""
    cols = {c: negatives[c].to_numpy() for c in negatives.columns}
    cols["anchor"] = new_id[cols["anchor"].astype(np.int64, copy=False)]
    cols["candidate"] = new_id[cols["candidate"].astype(np.int64, copy=False)]
    keep = (cols["anchor"] >= 0) & (cols["candidate"] >= 0)
    if not keep.all():
        cols = {c: x[keep] for c, x in cols.items()}
    table = pd.DataFrame(cols, copy=False)
    table["probability"] = table["probability"] / table.groupby("anchor")["probability"].transform("sum")
    return table


def _refresh_settings(train: TrainConfig, refresh: RefreshConfig | None) -> RefreshConfig | None:
    """The refresh settings when refreshes happen, else None."""
    if train.refresh_negatives_every == 0:
        return None
    if train.negatives == "random":
        logger.warning("training.refresh_negatives_every=%d has no effect with training.negatives: random (its "
                       "batches use no negative table): no refresh", train.refresh_negatives_every)
        return None
    if refresh is None:
        raise ValueError("training.refresh_negatives_every > 0 needs the negatives and embedding parameters "
                         "(RefreshConfig) to rebuild the table")
    return refresh


def videos_fingerprint(manifest: pd.DataFrame, *parts: bytes) -> str:
    """A hash of a run's videos (ids, content hashes, clips, ingestion parameters) and `parts`: what a
    checkpoint must have been trained on to be resumed."""
    digest = hashlib.sha256()
    columns = [c for c in ("video_id", "content_hash", "n_clips", "params_hash") if c in manifest]
    digest.update(pd.util.hash_pandas_object(manifest[columns], index=False).to_numpy().tobytes())
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:16]


def data_fingerprint(manifest: pd.DataFrame, negatives: pd.DataFrame, *parts: bytes) -> str:
    """A hash of what the training sees: its videos, the negative table and `parts` (the refresh
    settings when refreshes are on)."""
    return videos_fingerprint(manifest, refreshing.table_bytes(negatives), *parts)


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

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds of this module (`checkpoint`; `load_checkpoint_state` reads it back)."""
        return {"model": self.model.state_dict(), "objective": self.objective.state_dict()}

    def load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.objective.load_state_dict(ckpt["objective"])


@dataclass
class Trainer:
    """One run's working state: `build` makes it, `resume` may load a checkpoint into it and
    `distribute` sets `ddp` and `forward`; `train_step` advances it, `checkpoint` saves it. Fine-tuning
    (`pemt_pipeline.finetuning.train`) builds one too: its `inputs` has the same `train`, `model`,
    `augment` and `fingerprint`, its step module the same forward and checkpoint_state methods."""

    inputs: TrainInputs
    ctx: RankContext
    device: torch.device
    step_module: PretrainingStep  # model + objective, unwrapped (what the checkpoint holds)
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    dataset: ShardClipDataset
    sampler: VideoBatchSampler
    loader: DataLoader
    ddp: nn.Module | None = None  # step_module wrapped in DDP (itself in one process)
    forward: nn.Module | None = None  # ddp, compiled when training.compile
    step: int = 0  # optimiser steps done
    micro_done: int = 0  # micro-batches done (step x grad_accum)
    epoch: int = 0
    resumed_from: int | None = None  # the checkpoint's step, when resumed
    refresh_every: int = 0  # steps between negative refreshes (pretraining's; 0 = none)
    negatives_ref: dict[str, Any] | None = None  # the refreshed table in use (`refresh.write_table`)
    refreshes: list[dict[str, Any]] = field(default_factory=list)  # each refresh: step, seconds, clips
    tables_written: set[str] = field(default_factory=set)  # refreshed tables of this run not yet superseded

    @property
    def cfg(self) -> TrainConfig:
        return self.inputs.train

    @property
    def last_path(self) -> Path:
        return Path(self.cfg.checkpoint_dir) / LAST

    @property
    def batches_per_epoch(self) -> int:
        return len(self.sampler)


@dataclass
class LogWindow:
    """Sums of the micro-batch logs since the last metric log, and the clips seen meanwhile."""

    sums: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    count: int = 0
    clips: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, logs: dict[str, float], clips: int) -> None:
        for k, v in logs.items():
            self.sums[k] += v
        self.count += 1
        self.clips += clips


def _negative_sampler(inputs: TrainInputs) -> NegativeSampler | None:
    if inputs.train.negatives != "content":
        return None
    return NegativeSampler(inputs.negatives, inputs.clip_video_index, seed=inputs.train.seed)


def _all_finite(value: float, ctx: RankContext, device: torch.device) -> bool:
    flag = torch.tensor([1.0 if math.isfinite(value) else 0.0], device=device)
    if ctx.world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _mean_logs(sums: dict[str, float], count: int, ctx: RankContext, device: torch.device) -> dict[str, float]:
    keys = sorted(sums)
    values = torch.tensor([sums[k] / max(count, 1) for k in keys], dtype=torch.float64, device=device)
    if ctx.world_size > 1:
        dist.all_reduce(values)
        values /= ctx.world_size
    return dict(zip(keys, values.tolist()))


def prepare_process(cfg: TrainConfig, ctx: RankContext) -> torch.device:
    """This process's device (its rank's GPU under DDP), deterministic algorithms when asked, and the
    global seed `cfg.seed`."""
    device = rank_device(cfg.device, ctx)
    if device.type == "cuda" and ctx.world_size > 1:
        torch.cuda.set_device(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.manual_seed(cfg.seed)
    return device


def build(inputs: TrainInputs, ctx: RankContext) -> Trainer:
    """A fresh run: device, determinism and seed, then model + objective, AdamW with its schedule,
    the training dataset, its batch sampler (this rank's slice) and loader."""
    cfg = inputs.train
    device = prepare_process(cfg, ctx)
    model = PEMTModel(inputs.model)
    step_module = PretrainingStep(model, PretrainingObjective(model, inputs.loss)).to(device)
    optimizer = torch.optim.AdamW(weight_decay_groups(step_module, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    dataset = ShardClipDataset(inputs.manifest, inputs.augment, train=True, seed=cfg.seed)
    sampler = VideoBatchSampler(len(dataset), cfg.batch_size, cfg.negatives, _negative_sampler(inputs),
                                cfg.batches_per_epoch, cfg.seed, ctx.rank, ctx.world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda")
    return Trainer(inputs, ctx, device, step_module, optimizer, scheduler, dataset, sampler, loader,
                   refresh_every=cfg.refresh_negatives_every if inputs.refresh is not None else 0)


def _resume_blockers(ckpt: dict[str, Any], inputs: TrainInputs) -> list[str]:
    """Why the checkpoint `ckpt` cannot continue with `inputs` (empty: it can)."""
    section = inputs.train.SECTION
    differ = [f"{key} ({was!r} in the checkpoint, {now!r} now)" for key, was, now in config_differences(
        {section: ckpt.get("config") or {}, "model": ckpt.get("model_config") or {}},
        {section: inputs.train.identity(), "model": inputs.model.to_dict()})]
    if ckpt.get("data") != inputs.fingerprint:
        differ.append("the training data (manifest, shard contents, negatives table; fine-tuning: labels, model)")
    elif ckpt.get("negatives") is not None:
        problem = refreshing.table_problem(Path(inputs.train.checkpoint_dir), ckpt["negatives"])
        if problem:
            differ.append(problem)
    return differ


def _use_refreshed(trainer: Trainer, ref: dict[str, Any]) -> None:
    """Resume: the batch sampler draws from the refreshed table the checkpoint used (its sampler's
    state comes with the batch sampler's)."""
    table = refreshing.read_table(Path(trainer.cfg.checkpoint_dir), ref)
    trainer.sampler.negative_sampler = NegativeSampler(table, trainer.inputs.clip_video_index, seed=ref["seed"])
    trainer.negatives_ref, trainer.tables_written = ref, {ref["file"]}


def resume(trainer: Trainer) -> None:
    """Continue from checkpoint_dir/last.pt when training.resume is on and it was written with these
    parameters and data; one written otherwise is set aside (`checkpoint.set_aside`, by rank 0) and
    the run starts afresh. Rank 0 then makes the folder and clears stale temporaries."""
    cfg, ctx, path = trainer.cfg, trainer.ctx, trainer.last_path
    ckpt = load_checkpoint(path) if cfg.resume and path.is_file() else None
    differ = _resume_blockers(ckpt, trainer.inputs) if ckpt is not None else []
    if differ:
        if ctx.main:
            kept = set_aside(path, int(ckpt["step"]))
            logger.warning("%s was written with other parameters or data (%s): starting afresh. It is kept as "
                           "%s; to resume it, move it back to %s and run with the parameters and data it was "
                           "written with", path, "; ".join(differ), kept, path)
        ckpt = None
    if ckpt is not None:
        trainer.step_module.load_checkpoint_state(ckpt)
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("negatives") is not None:  # a refreshed table was in use
            _use_refreshed(trainer, ckpt["negatives"])
            trainer.refreshes = list(ckpt.get("refreshes", []))
        trainer.sampler.load_state_dict(ckpt["sampler"])
        set_rng_state(ckpt["rng"])
        trainer.step = trainer.resumed_from = int(ckpt["step"])
        trainer.micro_done = trainer.step * cfg.grad_accum
        trainer.epoch = trainer.micro_done // trainer.batches_per_epoch
        logger.info("resuming training from %s at step %d", path, trainer.step)
    if ctx.main:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)


def distribute(trainer: Trainer) -> None:
    """Wrap the step module in DDP over the processes (after `resume`: every rank then holds the
    same weights) and torch.compile it when training.compile."""
    ddp: nn.Module = trainer.step_module
    if trainer.ctx.world_size > 1:
        device_ids = [trainer.device.index] if trainer.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(trainer.step_module, device_ids=device_ids)
    trainer.ddp = ddp
    trainer.forward = torch.compile(ddp) if trainer.cfg.compile else ddp


def micro_batches(trainer: Trainer) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches, epoch after epoch, from where the run stands (a resumed run continues
    its epoch); the epoch advances once its batches are done."""
    while True:
        trainer.dataset.set_epoch(trainer.epoch)
        trainer.sampler.set_epoch(trainer.epoch)
        yield from trainer.loader
        if trainer.micro_done % trainer.batches_per_epoch == 0:
            trainer.epoch += 1


def train_step(trainer: Trainer, batches: Iterator[dict[str, torch.Tensor]], window: LogWindow) -> torch.Tensor:
    """One optimiser step: forward and backward over `grad_accum` micro-batches (DDP all-reduces the
    gradients on the last), gradient clipping, AdamW, schedule. Adds the logs to `window`; returns
    the gradient norm before clipping. A non-finite loss on any rank stops with FloatingPointError."""
    cfg, ctx = trainer.cfg, trainer.ctx
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and trainer.device.type == "cuda")
    for micro in range(cfg.grad_accum):
        batch = model_batch(next(batches), trainer.device, trainer.inputs.augment)
        torch.manual_seed(derive_seed(cfg.seed, trainer.step, micro, ctx.rank))  # dropout
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, trainer.step, micro, 1))  # same on all ranks
        last = micro == cfg.grad_accum - 1
        sync = trainer.ddp.no_sync() if ctx.world_size > 1 and not last else contextlib.nullcontext()
        with sync, autocast:
            loss, logs = trainer.forward(batch, generator)
        if not _all_finite(logs["total"], ctx, trainer.device):
            path = trainer.last_path
            raise FloatingPointError(
                f"the training loss became {logs['total']} at step {trainer.step} ({logs}); the last good checkpoint "
                f"is {path if path.exists() else 'none (no checkpoint written yet)'}: lower "
                "training.lr or check the data")
        (loss / cfg.grad_accum).backward()
        window.add(logs, int(batch["clip_mask"].sum()) * ctx.world_size)
        trainer.micro_done += 1
    grad_norm = nn.utils.clip_grad_norm_(trainer.step_module.parameters(), cfg.clip_grad_norm)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()
    trainer.step += 1
    return grad_norm


def log_metrics(trainer: Trainer, window: LogWindow, grad_norm: torch.Tensor, live: Live | None) -> dict[str, float]:
    """The window's mean losses (averaged over ranks), learning rate, gradient norm and clips/s at
    this step; logged to dvclive as train/<name> when `live`."""
    means = _mean_logs(window.sums, window.count, trainer.ctx, trainer.device)
    elapsed = time.perf_counter() - window.start
    means.update(lr=trainer.scheduler.get_last_lr()[0], grad_norm=float(grad_norm),
                 clips_per_second=window.clips / elapsed, step=trainer.step)
    if live is not None:
        live.step = trainer.step
        for k, v in means.items():
            if k != "step":
                live.log_metric(f"train/{k}", v)
        live.next_step()
    return means


def refresh_negatives(trainer: Trainer, live: Live | None) -> dict[str, Any]:
    """The negative table from the current CNNs (`refresh.refreshed_table`: rank 0 builds it and writes
    it beside the checkpoints, the other ranks receive it by broadcast), and the batch sampler drawing
    the rest of the epoch from it (a sampler seeded from (seed, step)). Returns the refresh's record
    (step, seconds, clips embedded, rows), also logged and kept for the checkpoint and the summary."""
    cfg, ctx, inputs = trainer.cfg, trainer.ctx, trainer.inputs
    start = time.perf_counter()
    folder = Path(cfg.checkpoint_dir)
    table = None
    if ctx.main:
        table = refreshing.refreshed_table(trainer.step_module.model, inputs.manifest, inputs.clip_video_index,
                                           inputs.model, inputs.refresh, trainer.device, folder)
    if ctx.world_size > 1:
        table = refreshing.broadcast_table(table, trainer.device)
    ref = refreshing.table_ref(table, trainer.step, derive_seed(cfg.seed, trainer.step, REFRESH_STREAM))
    if ctx.world_size > 1:  # every rank must draw its slice of the same global batches
        digests: list[str | None] = [None] * ctx.world_size
        dist.all_gather_object(digests, ref["digest"])
        if len(set(digests)) != 1:
            raise RuntimeError(f"step {trainer.step}: the ranks hold different refreshed negative tables {digests}")
    if ctx.main:
        refreshing.write_table(table, folder, ref)
        trainer.tables_written.add(ref["file"])
    bpe = trainer.batches_per_epoch
    trainer.epoch = trainer.micro_done // bpe  # at an epoch boundary: the next epoch
    trainer.sampler.set_epoch(trainer.epoch)
    trainer.sampler.replace_negatives(NegativeSampler(table, inputs.clip_video_index, seed=ref["seed"]),
                                      trainer.micro_done % bpe)
    trainer.negatives_ref = ref
    record = {"step": trainer.step, "seconds": round(time.perf_counter() - start, 3),
              "clips": len(inputs.clip_video_index), "rows": len(table), "digest": ref["digest"]}
    trainer.refreshes.append(record)
    logger.info("step %d: negative table refreshed from the current CNNs (%d clips embedded, %d rows) in %.2f s",
                record["step"], record["clips"], record["rows"], record["seconds"])
    if live is not None:
        live.step = trainer.step
        live.log_metric("train/refresh_seconds", record["seconds"])
        live.log_metric("train/refresh_clips", record["clips"])
    return record


def refresh_summary(trainer: Trainer) -> dict[str, Any]:
    """The refreshes of the run (resumed ones included) for the training summary."""
    done = trainer.refreshes
    table = str(Path(trainer.cfg.checkpoint_dir) / trainer.negatives_ref["file"]) if trainer.negatives_ref else None
    return {"every": trainer.refresh_every, "count": len(done), "last_step": done[-1]["step"] if done else None,
            "seconds": round(sum(r["seconds"] for r in done), 3), "clips_embedded": sum(r["clips"] for r in done),
            "table": table, "history": done}


def checkpoint(trainer: Trainer) -> None:
    """Write checkpoint_dir/last.pt (rank 0, atomically): all a resumed run needs to continue
    exactly. At an epoch boundary every rank first moves its sampler to the next epoch, so the
    checkpoint holds that epoch's start."""
    bpe = trainer.batches_per_epoch
    if trainer.micro_done % bpe == 0:
        trainer.sampler.set_epoch(trainer.micro_done // bpe)
    if trainer.ctx.main:
        module = trainer.step_module
        save_checkpoint(trainer.last_path, {
            "step": trainer.step, **module.checkpoint_state(),
            "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
            "sampler": trainer.sampler.state_dict(batches_done=trainer.micro_done % bpe), "rng": rng_state(),
            "config": trainer.cfg.identity(), "model_config": trainer.inputs.model.to_dict(),
            "data": trainer.inputs.fingerprint, **_refresh_state(trainer)})
        if trainer.negatives_ref is not None:  # tables of this run that no checkpoint uses any more
            superseded = trainer.tables_written - {trainer.negatives_ref["file"]}
            refreshing.remove_tables(Path(trainer.cfg.checkpoint_dir), superseded)
            trainer.tables_written -= superseded


def _refresh_state(trainer: Trainer) -> dict[str, Any]:
    """What a checkpoint holds of the refreshes (nothing before the first)."""
    if trainer.negatives_ref is None:
        return {}
    return {"negatives": dict(trainer.negatives_ref), "refreshes": [dict(r) for r in trainer.refreshes]}


def run_training(inputs: TrainInputs, ctx: RankContext | None = None) -> dict[str, Any]:
    """Train (resuming from `checkpoint_dir/last.pt` when allowed); returns the summary. Rank 0 writes
    the checkpoints, dvclive metrics and the final `last.pt`."""
    return fit(build(inputs, ctx or RankContext()))


def fit(trainer: Trainer, desc: str = "training") -> dict[str, Any]:
    """`resume`, `distribute`, then `train_step` to `steps` with metric logs and checkpoints; the
    summary. Shared by pretraining and fine-tuning (`pemt_pipeline.finetuning`), whose trainers differ
    in their step module (forward(batch, generator) -> (loss, logs), checkpoint_state,
    load_checkpoint_state), optimiser and data."""
    ctx, cfg = trainer.ctx, trainer.cfg
    kill_step = kill_point(KILL_AFTER_CHECKPOINT)  # test-only (pemt_pipeline.kill_points)
    resume(trainer)
    distribute(trainer)
    live = Live(dir=cfg.dvclive_dir, resume=trainer.resumed_from is not None, save_dvc_exp=False,
                dvcyaml=None) if ctx.main else None
    bar = tqdm(total=cfg.steps, initial=trainer.step, desc=desc, unit="step",
               disable=not (cfg.progress and ctx.main))
    history: list[dict[str, float]] = []
    trainer.step_module.train()
    batches, window, start = micro_batches(trainer), LogWindow(), time.perf_counter()
    while trainer.step < cfg.steps:
        grad_norm = train_step(trainer, batches, window)
        bar.update()
        done = trainer.step == cfg.steps
        if trainer.refresh_every and trainer.step % trainer.refresh_every == 0 and not done:
            batches.close()  # its loader iterator holds batches of the previous table
            window.start += refresh_negatives(trainer, live)["seconds"]  # not counted in clips/s
            batches = micro_batches(trainer)
        if trainer.step % cfg.log_every == 0 or done:
            history.append(log_metrics(trainer, window, grad_norm, live))
            bar.set_postfix(loss=f"{history[-1]['total']:.3f}", clips_s=f"{history[-1]['clips_per_second']:.0f}")
            window = LogWindow()
        if trainer.step % cfg.checkpoint_every == 0 or done:
            checkpoint(trainer)
            if ctx.main:
                kill_at(kill_step, trainer.step)
    bar.close()
    if live is not None:
        live.end()
    refreshes = {"negative_refreshes": refresh_summary(trainer)} if trainer.refresh_every else {}
    return {**refreshes, "steps": trainer.step, "resumed_from": trainer.resumed_from,
            "wall_seconds": round(time.perf_counter() - start, 2), "world_size": ctx.world_size,
            "device": str(trainer.device), "final": history[-1] if history else {},
            "first": history[0] if history else {}, "history": history, "checkpoint": str(trainer.last_path)}

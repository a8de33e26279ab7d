"""Fine-tuning parameters (``finetune:`` in conf/base/parameters_finetune.yml documents each key; the
defaults here are the same values). Defaults follow the authors' fine-tuning configuration where it
applies (Adam with AMSGrad, cosine schedule without warm-up, learning rate 1e-4 for pretrained parts
and 1e-3 for the new heads, weight decay 5e-6 not on norms and biases, dropout 0.5, 3 spatial test
crops); sizes are small CPU ones."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from pemt_pipeline.configs import (DEVICE, NON_EMPTY, above, at_least, between, each, from_params, optional, require)
from pemt_pipeline.distributed import LaunchSettings
from pemt_pipeline.evaluation.audio import AudioFolderConfig
from pemt_pipeline.evaluation.probe import ProbeConfig
from pemt_pipeline.training.loop import LoopSettings

PROTOCOLS = ("video", "visual_cnn")  # fine-tuned here; audio_linear_kfold is evaluation.audio.audio_kfold
ALL_PROTOCOLS = (*PROTOCOLS, "audio_linear_kfold")
INITS = ("pretrained", "random_init")


@dataclass(frozen=True)
class ProtocolConfig:
    """One protocol's training and test settings (``finetune.<protocol>:``)."""

    steps: int = 60
    batch_size: int = 4
    grad_accum: int = 1
    batches_per_epoch: int | None = None
    finetune_lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 5e-6
    amsgrad: bool = True
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    clip_grad_norm: float | None = None
    dropout: float = 0.5
    seed: int = 0
    test_clips: int | None = None
    test_crops: int = 3
    eval_batch_size: int = 4
    checkpoint_every: int = 20
    log_every: int = 5

    def check(self, section: str) -> None:
        """Ranges; ValueError naming `<section>.<key>` (FinetuneConfig.validate calls it per block)."""
        one = at_least(1)
        require(section, self, steps=one, batch_size=one, grad_accum=one, batches_per_epoch=optional(one),
                finetune_lr=at_least(0), head_lr=above(0), weight_decay=at_least(0), warmup_steps=at_least(0),
                min_lr_ratio=between(0, 1), clip_grad_norm=optional(above(0)), dropout=between(0, 1, high_open=True),
                seed=at_least(0), test_clips=optional(one), test_crops=one, eval_batch_size=one,
                checkpoint_every=one, log_every=one)


@dataclass(frozen=True)
class AudioKfoldConfig:
    """``finetune.audio_linear_kfold:`` (the ESC-50 protocol, `evaluation.audio.audio_kfold`): the
    labelled audio folder, its folds (None: every fold of the CSV), the probe, and the folder reading
    settings (`AudioFolderConfig`, the other keys of the block)."""

    root: str = "../shared/data/urbansound8k"
    labels_csv: str | None = None
    folds: tuple | None = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    folder: AudioFolderConfig = field(default_factory=lambda: AudioFolderConfig(fold_column="fold"))

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> AudioKfoldConfig:
        params = dict(params or {})
        own = {k: params.pop(k) for k in ("root", "labels_csv", "folds") if k in params}
        probe = ProbeConfig.from_dict(params.pop("probe", None) or {})
        return from_params(cls, own, "finetune.audio_linear_kfold", probe=probe,
                           folder=AudioFolderConfig.from_dict({"fold_column": "fold", **params}))


@dataclass(frozen=True)
class FinetuneConfig(LaunchSettings):
    """The ``finetune:`` block: settings shared by the protocols, then one block per protocol."""

    model_file: str = "data/06_models/pretrained_model.pt"
    train_splits: tuple[str, ...] = ("train",)
    test_splits: tuple[str, ...] = ("test",)
    baseline: bool = True
    baseline_seed: int = 0
    top_k: int = 5
    device: str = "auto"
    bf16: bool = True
    compile: bool = False
    deterministic: bool = True
    num_workers: int = 0
    checkpoint_dir: str = "data/06_models/finetune_checkpoints"
    resume: bool = True
    dvclive_dir: str = "data/08_reporting/dvclive/finetune"
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = "localhost:0"
    backend: str = "auto"
    progress: bool = True
    video: ProtocolConfig = field(default_factory=ProtocolConfig)
    visual_cnn: ProtocolConfig = field(default_factory=ProtocolConfig)
    audio_linear_kfold: AudioKfoldConfig = field(default_factory=AudioKfoldConfig)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> FinetuneConfig:
        """From the YAML block; unknown keys or bad values raise a ValueError naming them."""
        params = dict(params or {})
        blocks = {p: from_params(ProtocolConfig, params.pop(p, None) or {}, f"finetune.{p}") for p in PROTOCOLS}
        audio = AudioKfoldConfig.from_dict(params.pop("audio_linear_kfold", None))
        return from_params(cls, params, "finetune", audio_linear_kfold=audio, **blocks)

    def validate(self) -> None:
        one = at_least(1)
        require("finetune", self, model_file=NON_EMPTY, train_splits=each(NON_EMPTY), test_splits=each(NON_EMPTY),
                baseline_seed=at_least(0), top_k=one, device=DEVICE, num_workers=at_least(0),
                checkpoint_dir=NON_EMPTY, dvclive_dir=NON_EMPTY)
        self.check_launch("finetune")
        for p in PROTOCOLS:
            getattr(self, p).check(f"finetune.{p}")
        if self.visual_cnn.batch_size < 2 * self.world_size:  # one clip per video: BatchNorm needs 2 per process
            raise ValueError(f"finetune.visual_cnn.batch_size must be at least 2 clips per process (BatchNorm "
                             f"statistics), i.e. >= {2 * self.world_size}, got {self.visual_cnn.batch_size}")

    def protocol(self, name: str) -> ProtocolConfig:
        if name not in PROTOCOLS:
            raise ValueError(f"unknown fine-tuning protocol {name!r}; known: {list(PROTOCOLS)}")
        return getattr(self, name)


@dataclass(frozen=True)
class FinetuneRun(LoopSettings):
    """One fine-tuning run (a protocol from one initialisation), flat: what the shared training loop
    (`pemt_pipeline.training.loop.fit`) reads as its config."""

    protocol: str
    init: str  # pretrained | random_init
    steps: int
    batch_size: int
    grad_accum: int
    batches_per_epoch: int | None
    finetune_lr: float
    head_lr: float
    weight_decay: float
    amsgrad: bool
    warmup_steps: int
    min_lr_ratio: float
    clip_grad_norm: float  # inf = no clipping
    dropout: float
    seed: int
    device: str
    bf16: bool
    compile: bool
    deterministic: bool
    num_workers: int
    checkpoint_dir: str  # this run's folder
    checkpoint_every: int
    resume: bool
    log_every: int
    dvclive_dir: str  # this run's folder
    progress: bool
    nproc_per_node: int
    nnodes: int
    rdzv_endpoint: str
    backend: str

    SECTION = "finetune"

    @classmethod
    def of(cls, cfg: FinetuneConfig, protocol: str, init: str) -> FinetuneRun:
        """The run of `protocol` from `init`: its block's settings and the shared ones; checkpoints
        and dvclive metrics in <dir>/<protocol>/<init>."""
        block = dataclasses.asdict(cfg.protocol(protocol))
        block["clip_grad_norm"] = math.inf if block["clip_grad_norm"] is None else block["clip_grad_norm"]
        for key in ("test_clips", "test_crops", "eval_batch_size"):  # evaluation settings
            block.pop(key)
        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)
                  if f.name not in block and f.name not in ("protocol", "init")}
        shared.update(checkpoint_dir=f"{cfg.checkpoint_dir}/{protocol}/{init}",
                      dvclive_dir=f"{cfg.dvclive_dir}/{protocol}/{init}")
        return cls(protocol=protocol, init=init, **block, **shared)

"""Architecture search and fine-tuning of a GatedModel with the pretraining objective.

search:   loss = objective(model, batch) + lambda * (FLOPs / FLOPs_full - target)^2
          (the issue's lambda (FLOPs - target)^2 with FLOPs in units of the unpruned model's, so
          lambda does not depend on the model size). FLOPs: `penalty="ste"` (default) the hard
          architecture's, with the straight-through gradient, as the gates in the forward pass;
          "expected": E[FLOPs] under the gate probabilities (smooth, but below the hard FLOPs
          while scores are near 0). The gate scores learn with Adam at `arch_lr`, the weights
          (model, conv head-mixing logits, objective heads) with AdamW at `lr`.
finetune: the architecture fixed (set_architecture), the weights trained.
Batches are `training.data` batch dicts (video, audio, clip_mask, video_index), any iterable
(a DataLoader over ShardClipDataset with `collate`, a list); it is iterated again when exhausted.
Randomness (MEP masks, CPP pairs, dropout) is seeded from (seed, step) as in training.loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from pemt_pipeline.configs import above, at_least, between, from_params, one_of, optional, require
from pemt_pipeline.features.dataset import derive_seed
from pemt_pipeline.training.optim import weight_decay_groups

from .flops import expected_flops, ste_flops, transformer_flops
from .gated import GatedModel


@dataclass(frozen=True)
class SearchConfig:
    """`pruning.search:` of conf/base/parameters_pruning.yml (the same defaults) documents each
    field; the run sets `flops_target` from `pruning.targets`."""

    flops_target: float = 0.5  # target FLOPs as a fraction of the unpruned Transformers'
    flops_weight: float = 20.0  # lambda
    steps: int = 40
    arch_lr: float = 0.02  # gate and FFN-unit scores
    arch_optimizer: str = "adam"  # adam | sgd (momentum 0.9: steps scale with each gate's FLOPs)
    lr: float = 1e-4  # AdamW, weights (0: frozen; BatchNorm statistics still move in train mode)
    weight_decay: float = 0.01
    clip_grad_norm: float = 1.0
    n_clips: int | None = None  # clips per video the FLOPs are counted for (None: max_clips)
    penalty: str = "ste"  # ste | expected: the FLOPs the penalty takes (module docstring)
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Ranges and choices; ValueError naming `pruning.search.<key>`."""
        require("pruning.search", self, flops_target=between(0, 1, low_open=True), flops_weight=at_least(0),
                steps=at_least(1), arch_lr=above(0), arch_optimizer=one_of(("adam", "sgd")), lr=at_least(0),
                weight_decay=at_least(0), clip_grad_norm=(lambda v: v >= 0, ">= 0 (0: no clipping)"),
                n_clips=optional(at_least(1)), penalty=one_of(("ste", "expected")), seed=at_least(0))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        return from_params(cls, d, "pruning.search")


@dataclass(frozen=True)
class FinetuneConfig:
    """`pruning.finetune:` of conf/base/parameters_pruning.yml (the same defaults)."""

    steps: int = 40
    lr: float = 1e-4
    weight_decay: float = 0.01
    clip_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Ranges; ValueError naming `pruning.finetune.<key>`."""
        require("pruning.finetune", self, steps=at_least(1), lr=above(0), weight_decay=at_least(0),
                clip_grad_norm=(lambda v: v >= 0, ">= 0 (0: no clipping)"), seed=at_least(0))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        return from_params(cls, d, "pruning.finetune")


def _cycle(batches: Iterable[dict]) -> Iterator[dict]:
    while True:
        n = 0
        for batch in batches:
            n += 1
            yield batch
        if n == 0:
            raise ValueError("the batches ran out: pass a re-iterable (a list or a DataLoader)")


def _weights(gated: GatedModel, objective: nn.Module) -> list[nn.Parameter]:
    """The model's weights, the conv head-mixing logits and the objective's heads (distinct)."""
    return list({id(p): p for p in gated.weight_parameters() + list(objective.parameters())}
                .values())


def _adamw(gated: GatedModel, params: list[nn.Parameter], lr: float,
           weight_decay: float) -> torch.optim.AdamW:
    """AdamW over `params` with training's weight-decay groups (matrices only), the head-mixing
    logits excluded."""
    names = {id(p): n for n, p in gated.named_parameters()}  # params may include the objective's heads
    groups = weight_decay_groups([(names.get(id(p), ""), p) for p in params], weight_decay,
                                 exclude=lambda name: name.endswith("head_logits"))
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def _steps(gated: GatedModel, objective: nn.Module, batches: Iterable[dict], steps: int, seed: int,
           optimizers: list[torch.optim.Optimizer], clipped: list[nn.Parameter], clip: float,
           extra_loss=None) -> list[dict]:
    """Optimiser steps; gradients of `clipped` (the weights, not the gate scores) are clipped."""
    device = next(gated.parameters()).device
    gated.train()
    objective.train()
    history = []
    for step, batch in zip(range(steps), _cycle(batches)):
        batch = {k: v.to(device) for k, v in batch.items()}
        torch.manual_seed(derive_seed(seed, step, 0))  # dropout
        generator = torch.Generator().manual_seed(derive_seed(seed, step, 1))  # masks, pairs
        loss, logs = objective(gated, batch, generator)
        if extra_loss is not None:
            penalty, extra_logs = extra_loss()
            loss = loss + penalty
            logs.update(extra_logs)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"pruning loss became {loss.item()} at step {step}: {logs}")
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip and clipped:
            nn.utils.clip_grad_norm_(clipped, clip)
        for opt in optimizers:
            opt.step()
        history.append({"step": step, **logs, "loss": loss.item()})
    return history


def search(gated: GatedModel, batches: Iterable[dict], objective: nn.Module,
           cfg: SearchConfig) -> dict[str, Any]:
    """Search gates (and train weights) for cfg.steps steps, from the gates' current scores.
    Returns {"history": one dict per step (objective terms, "flops" of the hard architecture and
    "expected_flops", both as fractions of the unpruned FLOPs, "penalty", "loss"),
    "architecture", "flops" (final, fraction), "full_flops" (unpruned, per video), "target"}."""
    gated.set_architecture(None)
    full = transformer_flops(gated.cfg, None, cfg.n_clips)
    weights = _weights(gated, objective)
    arch = gated.arch_parameters()
    optimizers = [torch.optim.Adam(arch, lr=cfg.arch_lr) if cfg.arch_optimizer == "adam"
                  else torch.optim.SGD(arch, lr=cfg.arch_lr, momentum=0.9)]
    if cfg.lr > 0:
        optimizers.append(_adamw(gated, weights, cfg.lr, cfg.weight_decay))

    def penalty():
        expected = expected_flops(gated, cfg.n_clips) / full
        hard = ste_flops(gated, cfg.n_clips) / full  # value: the hard architecture's FLOPs
        term = cfg.flops_weight * ((hard if cfg.penalty == "ste" else expected)
                                   - cfg.flops_target) ** 2
        return term.float(), {"flops": hard.item(), "expected_flops": expected.item(),
                              "penalty": term.item()}

    frozen = [p for p in weights if p.requires_grad] if cfg.lr == 0 else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        history = _steps(gated, objective, batches, cfg.steps, cfg.seed, optimizers,
                         weights if cfg.lr > 0 else [], cfg.clip_grad_norm, penalty)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    arch = gated.architecture()
    return {"history": history, "architecture": arch, "target": cfg.flops_target,
            "flops": transformer_flops(gated.cfg, arch, cfg.n_clips) / full, "full_flops": full}


def finetune(gated: GatedModel, batches: Iterable[dict], objective: nn.Module,
             cfg: FinetuneConfig) -> dict[str, Any]:
    """Fix the current architecture (if not fixed yet) and train the weights used by it.
    Returns {"history": one dict per step, "architecture"}."""
    if gated.searching:
        gated.set_architecture(gated.architecture())
    weights = _weights(gated, objective)
    history = _steps(gated, objective, batches, cfg.steps, cfg.seed,
                     [_adamw(gated, weights, cfg.lr, cfg.weight_decay)], weights,
                     cfg.clip_grad_norm)
    return {"history": history, "architecture": gated.architecture()}

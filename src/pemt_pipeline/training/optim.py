"""Optimiser pieces shared by training and pruning's fine-tuning: AdamW's weight-decay groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch.nn as nn


def weight_decay_groups(parameters: nn.Module | Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                        exclude: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """Two AdamW parameter groups: [decayed, not decayed].

    Weight decay applies to weight matrices only: a parameter with >= 2 dimensions, unless its name
    contains ``parametrizations`` (the generators of orthogonal parametrisations) or `exclude(name)`
    is true; biases, norms and other vectors get none. `parameters` is a module (its
    `named_parameters()`) or (name, parameter) pairs; a parameter listed twice counts once, where
    it first appears. Order within each group follows `parameters`."""
    named = parameters.named_parameters() if isinstance(parameters, nn.Module) else parameters
    decay, no_decay, seen = [], [], set()
    for name, p in named:
        if id(p) in seen:
            continue
        seen.add(id(p))
        decayed = p.ndim >= 2 and "parametrizations" not in name and not (exclude and exclude(name))
        (decay if decayed else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

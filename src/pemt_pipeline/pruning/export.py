"""The pruned model without gates: conv kernels materialised, skipped attention removed, FFNs
computing only their kept units; saved as tensors + plain Python values (weights_only loads).

`PrunedModel` is a PEMTModel (same `embed_clips` / `contextualize` / `forward` / ModelOutput), so
evaluation code runs on it unchanged. Weights shared in the source model stay shared (the same
modules): an exported layer holds only what its op uses (attention: q, k, v, o; conv: the
kernel, v's V^T and o's U Sigma for low-rank layers; skip: nothing), and an FFN keeps the shared
fc1 / fc2 and the indices of its kept units (U's rows of fc1 / V's columns of fc2 are taken per
forward, so layers of different widths still share one fc1 / fc2). Sigma is a plain matrix.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pemt_pipeline.atomic import atomic_open
from pemt_pipeline.models import ModelConfig, PEMTModel

from . import linears
from .architecture import KERNEL, Architecture, validate_architecture
from .base import StreamModel, StreamTransformer, plain_sigmas
from .gated import GatedModel
from .spconv import conv_kernel, head_weights, segment_conv1d, self_attention

FORMAT = "pemt-pruned/1"


class Attention(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.q, self.k, self.v, self.o = layer.q, layer.k, layer.v, layer.o
        self.n_heads, self.dropout_p = layer.n_heads, layer.attention_dropout

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        p = self.dropout_p if self.training else 0.0
        return self_attention(self.q, self.k, self.v, self.o, self.n_heads, x, attn_mask, p)


class ConvMixer(nn.Module):
    """y = finish(conv1d(features(x) * mask) + bias) with a materialised kernel (spconv.py):
    dense layers: features(x) = x, finish = identity (b_O is in the bias); low rank:
    features(x) = normalize(V_v^T x) [O], finish(z) = U_o Sigma_o normalize(z) + b_o."""

    def __init__(self, v: nn.Module, o: nn.Module, k: int):
        super().__init__()
        rank = linears.rank_of(v)
        self.feat = None if rank is None else v.v  # V_v^T: [O, D]
        self.sigma, self.u = (None, None) if rank is None else (o.sigma, o.u)
        n = rank or linears.out_weight(v).shape[0]
        w = linears.in_weight(o)
        self.weight = nn.Parameter(w.new_zeros(n, n, k))  # [n_out, n_in, k]
        self.bias = nn.Parameter(w.new_zeros(n))

    def forward(self, x: Tensor, mask: Tensor | None, segments: tuple[int, ...]) -> Tensor:
        f = x if self.feat is None else F.normalize(self.feat(x), dim=-1)  # [B, L, n_in]
        if mask is not None:
            f = f * mask[..., None].to(f.dtype)
        z = segment_conv1d(f, self.weight, self.bias, segments)  # [B, L, n_out]
        return z if self.u is None else self.u(self.sigma(F.normalize(z, dim=-1)))


class SlicedFFN(nn.Module):
    """fc2(GELU(fc1(x))) over the kept hidden units only."""

    def __init__(self, fc1: nn.Module, fc2: nn.Module, units: int):
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2
        self.register_buffer("units", torch.arange(units, device=linears.in_weight(fc1).device))

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(linears.rows(self.fc1, x, self.units))  # [B, L, units]
        return linears.cols(self.fc2, h, self.units)


class PrunedLayer(nn.Module):
    """Post-LN layer whose attention is `op` (attention, conv3, conv1, skip)."""

    def __init__(self, layer: nn.Module, op: str, units: int):
        super().__init__()
        self.op = op
        self.mixer = (Attention(layer) if op == "attention"
                      else ConvMixer(layer.v, layer.o, KERNEL[op]) if op in KERNEL else None)
        self.ffn = SlicedFFN(layer.fc1, layer.fc2, units)
        self.norm1, self.norm2, self.dropout = layer.norm1, layer.norm2, layer.dropout

    def forward(self, x: Tensor, mask: Tensor | None, attn_mask: Tensor | None,
                segments: tuple[int, ...]) -> Tensor:
        y = (None if self.mixer is None else self.mixer(x, attn_mask) if self.op == "attention"
             else self.mixer(x, mask, segments))
        x = self.norm1(x if y is None else x + self.dropout(y))
        return self.norm2(x + self.dropout(self.ffn(x)))


@dataclass
class PrunedConfig:
    model: ModelConfig
    architecture: Architecture

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "architecture": copy.deepcopy(self.architecture)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrunedConfig:
        cfg = cls(ModelConfig.from_dict(d["model"]), d["architecture"])
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """The model's checks, then the architecture against it (ValueError naming what is wrong)."""
        self.model.validate()
        validate_architecture(self.model, self.architecture)


class PrunedModel(StreamModel):
    """A PEMTModel whose Transformers follow `cfg.architecture`. Built from `cfg` alone (fresh
    weights, to load a state dict into) or, by `export`, around a source model's modules."""

    def __init__(self, cfg: PrunedConfig, source: nn.Module | None = None,
                 layers: dict[str, list[nn.Module]] | None = None):
        if source is None:
            source = PEMTModel(cfg.model)
            layers = {name: list(t.layers) for name, t in source.transformers.items()}
        plain_sigmas(source)
        arch = validate_architecture(cfg.model, cfg.architecture)
        stacks = {name: StreamTransformer([PrunedLayer(layer, e["op"], e["ffn_units"])
                                           for layer, e in zip(layers[name], arch[name])])
                  for name in cfg.model.transformer_names}
        super().__init__(source, stacks)
        self.pruned_cfg = PrunedConfig(cfg.model, arch)

    def architecture(self) -> Architecture:
        return copy.deepcopy(self.pruned_cfg.architecture)


@torch.no_grad()
def export(gated: GatedModel) -> PrunedModel:
    """The gated model's current architecture (fixed, or its hard gates) as a PrunedModel with
    copies of the weights (the gated model is left as it is)."""
    arch = gated.architecture()
    source = copy.deepcopy(gated)
    layers = {name: [g.layer for g in ls] for name, ls in source.gated_layers().items()}
    pruned = PrunedModel(PrunedConfig(gated.cfg, arch), source, layers)
    for name, ls in source.gated_layers().items():
        for g, p in zip(ls, pruned.transformers[name].layers):
            p.ffn.units.copy_(g.kept_units())
            if p.op in KERNEL:
                a = head_weights(g.head_logits, KERNEL[p.op])
                kernel, bias = conv_kernel(g.layer.v, g.layer.o, a)
                p.mixer.weight.copy_(kernel)
                p.mixer.bias.copy_(bias)
    return pruned


def save_pruned(model: PrunedModel, path: str | os.PathLike,
                cpp_head: nn.Module | None = None) -> Path:
    """Atomically write (`pemt_pipeline.atomic`) {"format", "model": state dict, "model_config",
    "architecture", "cpp_head" (optional)}: tensors and plain Python values only (the layout of a
    model file, training.checkpoint.export_model, plus the architecture)."""
    state = {"format": FORMAT, "model": model.state_dict(), "model_config": model.cfg.to_dict(),
             "architecture": model.architecture(), "step": -1}
    if cpp_head is not None:
        state["cpp_head"] = cpp_head.state_dict()
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    return Path(path)


def load_pruned(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> PrunedModel:
    """A `save_pruned` file -> PrunedModel in eval mode (torch.load with weights_only=True)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    return pruned_from_state(state, str(path)).to(map_location)


def pruned_from_state(state: Any, source: str) -> PrunedModel:
    """The PrunedModel (eval mode) of an already loaded `save_pruned` file; `source` names it in errors."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{source!r} is not a pruned model file (format {FORMAT})")
    model = PrunedModel(PrunedConfig.from_dict({"model": state["model_config"],
                                                "architecture": state["architecture"]}))
    model.load_state_dict(state["model"])
    return model.eval()

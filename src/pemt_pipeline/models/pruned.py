"""The pruned model without gates: conv kernels materialised, skipped attention removed, FFNs
computing only their kept units.

`PrunedModel` is a PEMTModel (same `embed_clips` / `contextualize` / `forward` / ModelOutput), so
evaluation code runs on it unchanged. Weights shared in the source model stay shared (the same
modules): an exported layer holds only what its op uses (attention: q, k, v, o; conv: the
kernel, v's V^T and o's U Sigma for low-rank layers; skip: nothing), and an FFN keeps the shared
fc1 / fc2 and the indices of its kept units (U's rows of fc1 / V's columns of fc2 are taken per
forward, so layers of different widths still share one fc1 / fc2). Sigma is a plain matrix.
A PrunedModel is built around a fresh PEMTModel of its configuration (`streams.fresh_model`: fresh
weights to load a state dict into, or a source model's weights copied);
`pemt_pipeline.pruning.export` builds one from a searched model; `models.files` saves and loads it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import linears
from .architecture import KERNEL, Architecture, validate_architecture
from .config import ModelConfig
from .factorized import FactorizedLinear
from .streams import StreamModel, StreamTransformer, fresh_model, segment_conv1d
from .transformer import self_attention


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
    """A PEMTModel whose Transformers follow `cfg.architecture`, built around a fresh PEMTModel of
    `cfg.model` (`streams.fresh_model`): with fresh weights (source None, to load a state dict
    into) or with copies of `source`'s (a module with a PEMTModel's state-dict keys: `export`
    passes the searched model's `source_model()`); either way its Sigmas are plain matrices."""

    def __init__(self, cfg: PrunedConfig, source: nn.Module | None = None):
        base = fresh_model(cfg.model, source)
        arch = validate_architecture(cfg.model, cfg.architecture)
        stacks = {name: StreamTransformer([PrunedLayer(layer, e["op"], e["ffn_units"])
                                           for layer, e in zip(base.transformers[name].layers, arch[name])])
                  for name in cfg.model.transformer_names}
        super().__init__(base, stacks)
        self.pruned_cfg = PrunedConfig(cfg.model, arch)

    def architecture(self) -> Architecture:
        return copy.deepcopy(self.pruned_cfg.architecture)

    def used_parameters(self) -> int:
        """Scalars of the Transformers' weights that the forward pass uses, each tensor element
        once: the ops' weights (attention: q, k, v, o; conv: its kernel and bias, and v's V^T and
        o's U Sigma in low-rank layers; skip: none), the LayerNorms, and of fc1 / fc2 only the rows
        / columns of kept FFN units (the union over the layers that share them). Can exceed the
        unpruned model's count: a conv kernel is built per depth from a cross-layer-shared attention."""
        used: dict[int, Tensor] = {}

        def mark(p: Tensor | None, index: Tensor | None = None, dim: int = 0) -> None:
            if p is None:
                return
            m = used.setdefault(id(p), torch.zeros(p.shape, dtype=torch.bool))
            if index is None:
                m.fill_(True)
            else:
                m.index_fill_(dim, index.cpu(), True)

        def mark_all(module: nn.Module) -> None:
            for p in module.parameters():
                mark(p)

        for stack in self.transformers.values():
            for layer in stack.layers:
                mark_all(layer.norm1)
                mark_all(layer.norm2)
                if layer.mixer is not None:
                    mark_all(layer.mixer)
                units, fc1, fc2 = layer.ffn.units, layer.ffn.fc1, layer.ffn.fc2
                if isinstance(fc1, FactorizedLinear):  # rows of U (and bias): V^T, Sigma whole
                    mark_all(fc1.v)
                    mark_all(fc1.sigma)
                    mark(fc1.u.weight, units)
                    mark(fc1.u.bias, units)
                else:
                    mark(fc1.weight, units)
                    mark(fc1.bias, units)
                if isinstance(fc2, FactorizedLinear):  # columns of V^T: Sigma, U whole
                    mark(fc2.v.weight, units, 1)
                    mark_all(fc2.sigma)
                    mark_all(fc2.u)
                else:
                    mark(fc2.weight, units, 1)
                    mark(fc2.bias)
        return sum(int(m.sum()) for m in used.values())

"""Post-LayerNorm BERT Transformer whose layers can share weights across depths and Transformers.

Sharing is module aliasing: a shared layer (or a shared U, or a shared LayerNorm) is the same
nn.Module object in several places, so its parameters are the same tensors and `parameters()`
counts them once.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import ModelConfig, TransformerConfig
from .factorized import factorized_group, linear

LINEARS = ("q", "k", "v", "o", "fc1", "fc2")


def linear_shapes(cfg: TransformerConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each weight matrix of a layer."""
    d, f = cfg.hidden, cfg.ffn
    return {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc1": (d, f), "fc2": (f, d)}


class TransformerLayer(nn.Module):
    """Self-attention + GELU FFN, each followed by residual add and LayerNorm (post-LN, BERT).

    The six linears and two LayerNorms are passed in so that layers can share them.
    """

    def __init__(self, cfg: TransformerConfig, linears: dict[str, nn.Module],
                 norms: tuple[nn.LayerNorm, nn.LayerNorm]):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.attention_dropout = cfg.attention_dropout
        self.q, self.k, self.v, self.o, self.fc1, self.fc2 = (linears[n] for n in LINEARS)
        self.norm1, self.norm2 = norms
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        # x [B, L, D]; attn_mask [B, 1, 1, L] bool, True = key may be attended to
        B, L, D = x.shape
        q, k, v = (lin(x).view(B, L, self.n_heads, -1).transpose(1, 2)  # [B, H, L, D/H]
                   for lin in (self.q, self.k, self.v))
        p = self.attention_dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        x = self.norm1(x + self.dropout(self.o(a.transpose(1, 2).reshape(B, L, D))))
        return self.norm2(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


def _norms(cfg: TransformerConfig) -> tuple[nn.LayerNorm, nn.LayerNorm]:
    return tuple(nn.LayerNorm(cfg.hidden, cfg.layer_norm_eps) for _ in range(2))


def dense_layer(cfg: TransformerConfig) -> TransformerLayer:
    """A layer with its own full-rank weights."""
    linears = {n: linear(i, o, cfg.init_std) for n, (i, o) in linear_shapes(cfg).items()}
    return TransformerLayer(cfg, linears, _norms(cfg))


def lowrank_layers(cfg: TransformerConfig, n_groups: int, rank: int,
                   orthogonal_map: str) -> list[TransformerLayer]:
    """One layer per group; U (with biases) and the LayerNorms are shared, V and Sigma private."""
    groups = {n: factorized_group(i, o, rank, n_groups, orthogonal_map, cfg.init_std)
              for n, (i, o) in linear_shapes(cfg).items()}
    norms = _norms(cfg)
    return [TransformerLayer(cfg, {n: groups[n][g] for n in LINEARS}, norms)
            for g in range(n_groups)]


class Transformer(nn.Module):
    """A stack of layers; the same layer module may appear at several depths."""

    def __init__(self, layers: list[TransformerLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        # x [B, L, D]; mask [B, L] bool, True = real token
        attn_mask = None if mask is None else mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


def build_transformers(cfg: ModelConfig) -> dict[str, Transformer]:
    """The fusion's Transformers, sharing weights as `share_layers` / `share_transformers` say."""
    t, names = cfg.transformer, cfg.transformer_names
    n_distinct = 1 if cfg.share_layers else t.n_layers
    stacks: list[list[TransformerLayer]] = [[] for _ in names]
    for _ in range(n_distinct):
        if cfg.share_transformers == "none":
            layers = [dense_layer(t) for _ in names]
        elif cfg.share_transformers == "full":
            layers = [dense_layer(t)] * len(names)
        else:
            layers = lowrank_layers(t, len(names), cfg.rank, cfg.orthogonal_map)
        for stack, layer in zip(stacks, layers):
            stack.extend([layer] * (t.n_layers // n_distinct))
    return {name: Transformer(stack) for name, stack in zip(names, stacks)}

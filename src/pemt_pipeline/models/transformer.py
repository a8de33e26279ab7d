"""Post-LayerNorm BERT Transformer whose layers can share weights across depths and Transformers.

Sharing is module aliasing: a shared layer (or a shared U, or a shared LayerNorm) is the same
nn.Module object in several places, so its parameters are the same tensors and `parameters()`
counts them once.
"""

from __future__ import annotations

from itertools import accumulate

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import ModelConfig, TransformerConfig
from .dropout import Dropout
from .factorized import FactorizedLinear, factorized_group, linear
from .fused import project

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
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        # x [B, L, D]; attn_mask [B, 1, 1, L] bool, True = key may be attended to
        B, L, D = x.shape
        return joint_layer([self], x.reshape(B * L, D), [(B, L, attn_mask)]).view(B, L, D)


Part = tuple[int, int, "Tensor | None"]  # a group's (sequences B, length L, attn_mask [B, 1, 1, L] or None)


def joint_layer(layers: list[TransformerLayer], x: Tensor, parts: list[Part]) -> Tensor:
    """One depth of several Transformers at once: x [T, D] holds group g's B_g x L_g tokens
    (flattened, groups one after another) and layers[g] applies to them. The layers are one module
    or low-rank layers sharing U and the LayerNorms (`joinable`): every product with a shared
    weight, the dropouts and the LayerNorms run once over every token. -> [T, D]."""
    lay, sizes = layers[0], [B * L for B, L, _ in parts]
    p = lay.attention_dropout if lay.training else 0.0
    qkv = project([[la.q, la.k, la.v] for la in layers], x, sizes)  # [T, D] each
    a = torch.cat([attend(*(y[lo:lo + B * L] for y in qkv), B, L, lay.n_heads, mask, p)
                   for lo, (B, L, mask) in zip(accumulate(sizes, initial=0), parts)])  # [T, D]
    x = lay.norm1(x + lay.dropout(project([[la.o] for la in layers], a, sizes)[0]))
    h = project([[la.fc1] for la in layers], x, sizes)[0]  # [T, F]
    return lay.norm2(x + lay.dropout(project([[la.fc2] for la in layers], h, sizes, gelu=True)[0]))


def attend(q: Tensor, k: Tensor, v: Tensor, B: int, L: int, n_heads: int, attn_mask: Tensor | None,
           dropout_p: float) -> Tensor:
    """Scaled dot-product attention over B sequences of L tokens: q, k, v [B*L, D] -> [B*L, D]."""
    q, k, v = (y.view(B, L, n_heads, -1).transpose(1, 2) for y in (q, k, v))  # [B, H, L, D/H]
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    return a.transpose(1, 2).reshape(B * L, -1)


def self_attention(q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module, n_heads: int, x: Tensor,
                   attn_mask: Tensor | None, dropout_p: float) -> Tensor:
    """TransformerLayer's attention branch (the same ops, so the same numbers): x [B, L, D],
    attn_mask [B, 1, 1, L] bool (True = key may be attended to) -> [B, L, D]."""
    B, L, D = x.shape
    sizes = [B * L]
    a = attend(*project([[q, k, v]], x.reshape(B * L, D), sizes), B, L, n_heads, attn_mask, dropout_p)
    return project([[o]], a, sizes)[0].view(B, L, D)


def joinable(layers: list[nn.Module]) -> bool:
    """Whether `joint_layer` can run these layers together: one module, or low-rank
    TransformerLayers sharing every U and both LayerNorms."""
    first = layers[0]
    if not all(isinstance(la, TransformerLayer) for la in layers):
        return False
    if all(la is first for la in layers):
        return True
    return all(isinstance(getattr(la, n), FactorizedLinear) and getattr(la, n).u is getattr(first, n).u
               for la in layers for n in LINEARS) and all(
        la.norm1 is first.norm1 and la.norm2 is first.norm2 and la.n_heads == first.n_heads
        and la.attention_dropout == first.attention_dropout and la.dropout.p == first.dropout.p for la in layers)


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


def can_run_jointly(transformers: list[nn.Module]) -> bool:
    """Whether `run_jointly` can run these Transformers together: plain Transformers of one depth
    whose layers are `joinable` at every depth."""
    return (len(transformers) > 1 and all(isinstance(t, Transformer) for t in transformers)
            and len({len(t.layers) for t in transformers}) == 1
            and all(joinable(list(layers)) for layers in zip(*(t.layers for t in transformers))))


def run_jointly(transformers: list[Transformer], xs: list[Tensor], masks: list[Tensor | None]) -> list[Tensor]:
    """Several Transformers (`can_run_jointly`) on their own inputs xs [B_g, L_g, D] (masks
    [B_g, L_g] bool or None), depth by depth together (`joint_layer`) -> [B_g, L_g, D] each."""
    parts = [(x.shape[0], x.shape[1], None if m is None else m[:, None, None, :]) for x, m in zip(xs, masks)]
    x = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])  # [T, D]
    for layers in zip(*(t.layers for t in transformers)):
        x = joint_layer(list(layers), x, parts)
    return [y.view(like.shape) for y, like in zip(x.split([B * L for B, L, _ in parts]), xs)]


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

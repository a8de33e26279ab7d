"""The single-path search space: every (Transformer, depth) of a model gets its own gates while
the layer weights stay those of the model (shared across depths and Transformers as they were).

Per (stream, depth), nested binary gates with straight-through estimators (STE) on learnable
scores s (hard value [s > 0] forward, gradient of sigmoid(s) backward):
    y = g_attn attention(x) + (1 - g_attn) (g_k3 conv3(x) + (1 - g_k3) g_keep conv1(x))
so the op is attention, conv3 or conv1 (built from the attention's v and o, spconv.py) or skip.
The nesting follows the parameter subsets (conv1 is conv3's centre, conv3 uses v and o of the
attention, skip uses nothing): each gate decides whether to add what the next larger op adds, so
under FLOPs pressure a layer steps attention -> conv3 -> conv1 -> skip, the task gradient weighing
two neighbouring ops at each step (with a hard gate on, the gates below it get no gradient);
and one gate per FFN hidden unit multiplies GELU(fc1(x)). Each layer also owns the head-mixing
logits of its convolution ([3, H]). Post-LN as the model: x = norm1(x + y), skip gives norm1(x).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pemt_pipeline.models import KERNEL, Architecture, PEMTModel, linears, validate_architecture
from pemt_pipeline.models.streams import StreamModel, StreamTransformer
from pemt_pipeline.models.transformer import self_attention

from .spconv import gated_conv, head_weights

ARCH_PARAMETERS = ("gate_scores", "ffn_scores")


def ste(scores: Tensor) -> Tensor:
    """[scores > 0] as 0/1 exactly in the forward pass, d sigmoid(scores) in the backward pass."""
    p = torch.sigmoid(scores)
    return (scores > 0).to(p.dtype) + (p - p.detach())


class GatedLayer(nn.Module):
    """One depth of one Transformer around a (possibly shared) TransformerLayer."""

    def __init__(self, layer: nn.Module, ffn: int, init_score: float):
        super().__init__()
        self.layer = layer
        like = {"dtype": layer.norm1.weight.dtype, "device": layer.norm1.weight.device}
        # gates: attention (vs conv), kernel 3 (vs 1), keep conv1 (vs skip)
        self.gate_scores = nn.Parameter(torch.full((3,), init_score, **like))
        self.ffn_scores = nn.Parameter(torch.full((ffn,), init_score, **like))
        # kernel positions (offsets -1, 0, +1) x heads; softmax over heads per position
        self.head_logits = nn.Parameter(torch.zeros(3, layer.n_heads, **like))
        self.op: str | None = None  # None: searching; else the fixed op
        self.register_buffer("units", None, persistent=False)  # kept FFN units when fixed

    # --- the ops -----------------------------------------------------------------------------
    def attention(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        lay = self.layer
        p = lay.attention_dropout if self.training else 0.0
        return self_attention(lay.q, lay.k, lay.v, lay.o, lay.n_heads, x, attn_mask, p)

    def conv(self, x: Tensor, mask: Tensor | None, segments: tuple[int, ...], k: int) -> Tensor:
        a = head_weights(self.head_logits, k)  # [k, H]
        return gated_conv(self.layer.v, self.layer.o, x, mask, a, segments)

    def mix(self, op: str, x: Tensor, mask: Tensor | None, attn_mask: Tensor | None,
            segments: tuple[int, ...]) -> Tensor | None:
        """The output of one op, [B, L, D] (None for skip)."""
        if op == "attention":
            return self.attention(x, attn_mask)
        if op in KERNEL:
            return self.conv(x, mask, segments, KERNEL[op])
        return None

    # --- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor, mask: Tensor | None, attn_mask: Tensor | None,
                segments: tuple[int, ...]) -> Tensor:
        # x [B, L, D]; mask [B, L] bool (True = real token); attn_mask [B, 1, 1, L]
        lay = self.layer
        if self.op is None:
            attn, k3, keep = ste(self.gate_scores)
            conv = k3 * self.conv(x, mask, segments, 3) + (1 - k3) * keep * self.conv(
                x, mask, segments, 1)
            y = attn * self.attention(x, attn_mask) + (1 - attn) * conv
        else:
            y = self.mix(self.op, x, mask, attn_mask, segments)
        x = lay.norm1(x if y is None else x + lay.dropout(y))
        if self.op is None:
            ffn = lay.fc2(F.gelu(lay.fc1(x)) * ste(self.ffn_scores))  # units gated: [B, L, F]
        else:
            h = F.gelu(linears.rows(lay.fc1, x, self.units))  # [B, L, units]
            ffn = linears.cols(lay.fc2, h, self.units)
        return lay.norm2(x + lay.dropout(ffn))

    # --- architecture ------------------------------------------------------------------------
    def choice(self) -> dict:
        """{"op", "ffn_units"}: the fixed choice, else the hard gates' current one."""
        if self.op is not None:
            return {"op": self.op, "ffn_units": len(self.units)}
        attn, k3, keep = (self.gate_scores > 0).tolist()
        op = "attention" if attn else "conv3" if k3 else "conv1" if keep else "skip"
        return {"op": op, "ffn_units": int((self.ffn_scores > 0).sum())}

    def kept_units(self) -> Tensor:
        """Indices of the kept FFN units, ascending."""
        if self.op is not None:
            return self.units
        return torch.nonzero(self.ffn_scores > 0).flatten()

    def fix(self, op: str | None, units: int | None = None) -> None:
        """Fix op and the `units` highest-scoring FFN units (None: back to searching)."""
        self.op = op
        if op is None:
            self.units = None
            return
        order = torch.argsort(self.ffn_scores.detach(), descending=True, stable=True)
        self.units = order[:units].sort().values


class GatedModel(StreamModel):
    """`model` (its modules shared, not copied) with a GatedLayer at every (Transformer, depth).

    arch_parameters(): the gate and FFN-unit scores (the search's architecture parameters);
    weight_parameters(): everything else (the model's weights and the head-mixing logits).
    """

    def __init__(self, model: PEMTModel, init_score: float = 1.0):
        ffn = model.cfg.transformer.ffn
        stacks = {name: StreamTransformer([GatedLayer(layer, ffn, init_score)
                                           for layer in transformer.layers])
                  for name, transformer in model.transformers.items()}
        super().__init__(model, stacks)

    def source_model(self) -> StreamModel:
        """The model being pruned as a view sharing this one's modules: its parts and, per
        Transformer, the wrapped layers. For its weights only (`state_dict()` has a PEMTModel's
        keys, `export` copies them); its forward does not run (the layers take no segments)."""
        return StreamModel(self, {name: StreamTransformer([g.layer for g in ls])
                                  for name, ls in self.gated_layers().items()})

    def gated_layers(self) -> dict[str, list[GatedLayer]]:
        return {name: list(t.layers) for name, t in self.transformers.items()}

    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[-1] in ARCH_PARAMETERS]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    @property
    def searching(self) -> bool:
        return any(layer.op is None for ls in self.gated_layers().values() for layer in ls)

    def architecture(self) -> Architecture:
        """The current (fixed, or hard-gated) architecture as a plain dict."""
        return {name: [layer.choice() for layer in ls] for name, ls in self.gated_layers().items()}

    def set_architecture(self, arch: Architecture | None) -> None:
        """Fix every layer's op and its `ffn_units` highest-scoring units; None: search again."""
        if arch is None:
            for ls in self.gated_layers().values():
                for layer in ls:
                    layer.fix(None)
            return
        arch = validate_architecture(self.cfg, arch)
        for name, ls in self.gated_layers().items():
            for layer, entry in zip(ls, arch[name]):
                layer.fix(entry["op"], entry["ffn_units"])

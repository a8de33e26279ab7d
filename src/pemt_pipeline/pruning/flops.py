"""Analytic FLOPs of the Transformers of a (pruned) configuration, and their expectation under
the search's gate probabilities.

Convention (torch.utils.flop_counter's): 2 x multiply-adds of matrix products, convolutions and
attention (QK^T and PV); bias additions, normalisations, activations, softmax and masking count 0.
Per sequence of L tokens, hidden D, FFN F, O = rank of the low-rank layers:
    linear N -> M        dense 2LNM;  low rank 2L(NO + OO + OM)   (V^T, Sigma, U)
    attention            4 linear(D -> D) + 4 L^2 D                (2 L^2 D for QK^T, 2 for PV)
    conv_k (exported)    dense 2LkD^2;  low rank 2L(DO + kOO + OO + OD)
    skip                 0
    FFN, u units kept    linear(D -> u) + linear(u -> D), U's rows / V's columns sliced
The convolution is counted as the exported model computes it (the kernel folded between v's
features and o's first map, spconv.py). Not per token, so not counted: building each orthogonal
Sigma = base @ matrix_exp(A) once per forward (2 O^3 per private Sigma, which flop_counter sees on
the parametrised PEMTModel; the exported model holds Sigma as a plain matrix).
On CPU flop_counter counts SDPA as 0 (its table lists the CUDA kernels only): tests/pruning maps
the CPU kernel to the same formula; with it the counts agree exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pemt_pipeline.models import (
    KERNEL,
    OPS,
    Architecture,
    ModelConfig,
    full_architecture,
    stream_lengths,
    validate_architecture,
)

from .gated import ste


def linear_flops(cfg: ModelConfig, n_in: int, n_out: int, L: int) -> int:
    if cfg.share_transformers == "lowrank":
        o = cfg.rank
        return 2 * L * (n_in * o + o * o + o * n_out)
    return 2 * L * n_in * n_out


def mixer_flops(cfg: ModelConfig, op: str, L: int) -> int:
    """FLOPs of the op replacing the self-attention, over one sequence of L tokens."""
    d = cfg.transformer.hidden
    if op == "attention":
        return 4 * linear_flops(cfg, d, d, L) + 4 * L * L * d
    if op in KERNEL:
        k = KERNEL[op]
        if cfg.share_transformers == "lowrank":
            o = cfg.rank
            return 2 * L * (d * o + k * o * o + o * o + o * d)
        return 2 * L * k * d * d
    if op == "skip":
        return 0
    raise ValueError(f"op {op!r}, expected one of {OPS}")


def ffn_flops(cfg: ModelConfig, units: int, L: int) -> int:
    d = cfg.transformer.hidden
    return linear_flops(cfg, d, units, L) + linear_flops(cfg, units, d, L)


def layer_flops(cfg: ModelConfig, op: str, units: int, L: int) -> int:
    return mixer_flops(cfg, op, L) + ffn_flops(cfg, units, L)


def _lengths(cfg: ModelConfig, seq_lens: int | dict[str, int] | None) -> dict[str, int]:
    return seq_lens if isinstance(seq_lens, dict) else stream_lengths(cfg, seq_lens)


def transformer_flops(cfg: ModelConfig, architecture: Architecture | None = None,
                      seq_lens: int | dict[str, int] | None = None) -> int:
    """FLOPs of all Transformers for one video. architecture None: unpruned. seq_lens: tokens per
    Transformer ({"visual": L, ...}), or clips per video (int), None = cfg.max_clips clips."""
    arch = validate_architecture(cfg, architecture or full_architecture(cfg))
    lengths = _lengths(cfg, seq_lens)
    return sum(layer_flops(cfg, e["op"], e["ffn_units"], lengths[name])
               for name, depths in arch.items() for e in depths)


def expected_flops(gated, seq_lens: int | dict[str, int] | None = None) -> Tensor:
    """Differentiable E[FLOPs] of a GatedModel for one video under its gate probabilities
    p = sigmoid(score): p_attn attention + (1 - p_attn)(p_k3 conv3 + (1 - p_k3) p_keep conv1)
    + FFN(sum of unit probabilities). Layers with a fixed architecture count exactly."""
    return _gated_flops(gated, seq_lens, torch.sigmoid)


def ste_flops(gated, seq_lens: int | dict[str, int] | None = None) -> Tensor:
    """The same with the straight-through gates: the value is the FLOPs of the current hard
    architecture (= transformer_flops(cfg, gated.architecture())), the gradient that of
    `expected_flops` with the other gates at their hard values (the search's penalty)."""
    return _gated_flops(gated, seq_lens, ste)


def _gated_flops(gated, seq_lens, gate) -> Tensor:
    cfg = gated.cfg
    lengths = _lengths(cfg, seq_lens)
    f = cfg.transformer.ffn
    total = torch.zeros((), dtype=torch.float64, device=next(gated.parameters()).device)
    for name, transformer in gated.transformers.items():
        L = lengths[name]
        cost = {op: mixer_flops(cfg, op, L) for op in OPS}
        f0, f1 = ffn_flops(cfg, 0, L), ffn_flops(cfg, f, L)
        for layer in transformer.layers:
            if layer.op is not None:
                total = total + layer_flops(cfg, layer.op, len(layer.units), L)
                continue
            attn, k3, keep = gate(layer.gate_scores.double())
            conv = k3 * cost["conv3"] + (1 - k3) * keep * cost["conv1"]
            units = gate(layer.ffn_scores.double()).sum()
            total = total + attn * cost["attention"] + (1 - attn) * conv
            total = total + f0 + (f1 - f0) / f * units
    return total

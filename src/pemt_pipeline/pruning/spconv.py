"""Temporal convolution built from a self-attention's value and output projections (SPViT).

Multi-head attention is o(concat_h sum_s P^h_ts v(x_s)^h). Fixing head h to attend to offset j with
weight a_jh gives a convolution: z_t = sum_j A_j v(x_{t+j}), y_t = o(z_t), A_j = diag(a_j per head
channel). For linear v, o this is y_t = sum_j K_j x_{t+j} + bias with
    K_j = sum_h a_jh W_O^h W_V^h,    bias = b_O + W_O sum_j A_j b_V,
SPViT's kernel; the heads are mixed into each kernel position by a softmax over heads of
learnable logits (3 positions: offsets -1, 0, +1; the 1-wide kernel uses the centre row, a subset
of the 3-wide one). With the shared low-rank weights, v and o normalise inside, so the kernel is
folded between v's normalised rank features and o's first map V_o^T:
    r_s = normalize(V_v^T x_s)                                   [O]
    z_t = sum_j K_j r_{t+j} + c,  K_j = V_o^T A_j U_v Sigma_v     [O, O]
    y_t = U_o Sigma_o normalize(z_t) + b_o
Padding: the convolution zero-pads its input outside the real tokens (padded clips and beyond the
sequence ends) while the bias terms stay (as nn.Conv1d does). The summary (BOS) token is an
ordinary first token of its modality part: its neighbours are the zero padding and clip 1. In the
multimodal Transformer each modality part ([BOS_v, v_1..T], [BOS_a, a_1..T]) is convolved on its
own: the last visual clip and the audio BOS are not temporal neighbours.

`gated_conv` computes this from the live (shared) v and o modules, for the search;
`conv_kernel` materialises K and the bias for the exported model (export.ConvMixer).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from pemt_pipeline.models import linears
from pemt_pipeline.models.streams import segment_conv1d


def head_weights(logits: Tensor, k: int) -> Tensor:
    """logits [3, H] (offsets -1, 0, +1) -> a [k, H], a softmax over heads per kernel position;
    k = 1 takes the centre position."""
    if k not in (1, 3):
        raise ValueError(f"kernel size {k}, expected 1 or 3")
    rows = logits if k == 3 else logits[1:2]
    return rows.softmax(-1)


def channel_weights(a: Tensor, hidden: int) -> Tensor:
    """a [k, H] -> [hidden, k]: each head's weight repeated over its channels."""
    return a.t().repeat_interleave(hidden // a.shape[1], dim=0)


def _masked(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask[..., None].to(x.dtype)


def gated_conv(v: nn.Module, o: nn.Module, x: Tensor, mask: Tensor | None, a: Tensor,
               segments: tuple[int, ...]) -> Tensor:
    """The convolution through the live modules: y = o(depthwise_conv(v(x) - b_v) + bias).
    x [B, L, D], mask [B, L] bool (True = real token) or None, a [k, H] -> [B, L, D]."""
    D = x.shape[-1]
    w = channel_weights(a, D)  # [D, k]
    lin = _masked(linears.linear_part(v, x), mask)  # [B, L, D]
    b = linears.out_bias(v)
    bias = None if b is None else b * w.sum(-1)  # V's bias through every kernel position
    z = segment_conv1d(lin, w.unsqueeze(1), bias, segments, groups=D)  # [B, L, D]
    return o(z)


def conv_kernel(v: nn.Module, o: nn.Module, a: Tensor) -> tuple[Tensor, Tensor]:
    """The materialised convolution: (weight [n_out, n_in, k], bias [n_out]) acting on
    features(v, x). Dense: n_in = n_out = D and the bias includes b_O (nothing is left for
    `finish`); low rank: n_in = n_out = O and o's U Sigma normalize(.) + b_o follows."""
    D = linears.out_weight(v).shape[0]
    w = channel_weights(a, D)  # [D, k]
    first, wv = linears.in_weight(o), linears.out_weight(v)  # [n_out, D], [D, n_in]
    kernel = torch.einsum("od,dk,dn->onk", first, w, wv)
    b = linears.out_bias(v)
    bias = first @ (b * w.sum(-1)) if b is not None else first.new_zeros(first.shape[0])
    if linears.rank_of(o) is None and o.bias is not None:
        bias = bias + o.bias
    return kernel, bias


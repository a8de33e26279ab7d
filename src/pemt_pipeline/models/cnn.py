"""Clip encoders: a 3D ResNet for video clips and a separable-conv 2D ResNet for log-mel clips.

Both are bottleneck ResNets (stem, four stages, global average pool) mapping a batch of clips to
one embedding per clip. Conv + BatchNorm + ReLU units are torchvision's `Conv{2,3}dNormActivation`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops.misc import Conv2dNormActivation, Conv3dNormActivation

from .config import AudioCNNConfig, VisualCNNConfig


class Bottleneck(nn.Module):
    """relu(branch(x) + shortcut(x)); the branch's last BatchNorm starts at zero."""

    def __init__(self, branch: nn.Sequential, shortcut: nn.Module):
        super().__init__()
        self.branch, self.shortcut = branch, shortcut
        nn.init.zeros_(branch[-1][-1].weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


# make_block(c_in, c_inner, c_out, stride, stage) -> Bottleneck
BlockFactory = Callable[[int, int, int, int, int], Bottleneck]


class ResNet(nn.Module):
    """stem -> stages of bottlenecks (stage i: width * 2**i inner, 4x that out) -> global mean
    -> BatchNorm1d.

    The closing BatchNorm standardises each channel of the clip embedding across clips. Pooled
    post-ReLU features are a large positive common part plus a per-clip variation of about 1% of
    it; the projection's LayerNorm (per token, across channels) cannot remove a common part, so
    without this the clip tokens, and everything the Transformers and the CPP head read from them,
    were nearly the same for every video. With fresh running statistics (mean 0, variance 1) it is
    the identity in eval mode, so an untrained CNN's embeddings are the raw pooled features.
    """

    def __init__(self, stem: nn.Module, make_block: BlockFactory, width: int,
                 depths: tuple[int, ...], strides: tuple[int, ...]):
        super().__init__()
        self.stem = stem
        stages, c_in = [], width
        for i, (depth, stride) in enumerate(zip(depths, strides)):
            inner = width * 2**i
            blocks = [make_block(c_in, inner, 4 * inner, stride, i)]
            blocks += [make_block(4 * inner, inner, 4 * inner, 1, i) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = 4 * inner
        self.stages = nn.Sequential(*stages)
        self.out_dim = c_in
        self.out_norm = nn.BatchNorm1d(c_in)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        # x [N, C, (F,) H, W] -> [N, out_dim]
        return self.out_norm(self.stages(self.stem(x)).flatten(2).mean(-1))


def _shortcut(conv: Callable[..., nn.Module], c_in: int, c_out: int, stride) -> nn.Module:
    if c_in == c_out and stride in (1, (1, 1), (1, 1, 1)):
        return nn.Identity()
    return conv(c_in, c_out, 1, stride, activation_layer=None)


def visual_resnet(cfg: VisualCNNConfig) -> ResNet:
    """Single-pathway 3D ResNet: temporal kernel k_t in each block's first conv (k_t x 1 x 1), then
    1 x 3 x 3 (strided) and 1 x 1 x 1; only the stem may stride time. Input [N, 3, F, H, W]."""
    kt = cfg.stem_temporal_kernel
    stem = nn.Sequential(
        Conv3dNormActivation(cfg.in_channels, cfg.width, (kt, 7, 7), (cfg.stem_temporal_stride, 2, 2)),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))

    def block(c_in: int, c_inner: int, c_out: int, stride: int, stage: int) -> Bottleneck:
        s = (1, stride, stride)
        branch = nn.Sequential(
            Conv3dNormActivation(c_in, c_inner, (cfg.temporal_kernels[stage], 1, 1)),
            Conv3dNormActivation(c_inner, c_inner, (1, 3, 3), s),
            Conv3dNormActivation(c_inner, c_out, 1, activation_layer=None))
        return Bottleneck(branch, _shortcut(Conv3dNormActivation, c_in, c_out, s))

    # res2 keeps the max-pooled size, res3..res5 halve it
    strides = (1,) + (2,) * (len(cfg.depths) - 1)
    return ResNet(stem, block, cfg.width, cfg.depths, strides)


def separable_conv(c_in: int, c_out: int, k: int, stride: int = 1, inner_norm: bool = False) -> nn.Sequential:
    """A k x k conv as k x 1 (frequency) then 1 x k (time), then BatchNorm + ReLU; with `inner_norm`
    also BatchNorm + ReLU between the halves (the authors' released code)."""
    first = (Conv2dNormActivation(c_in, c_out, (k, 1), (stride, 1)) if inner_norm
             else nn.Conv2d(c_in, c_out, (k, 1), (stride, 1), (k // 2, 0), bias=False))
    return nn.Sequential(first, Conv2dNormActivation(c_out, c_out, (1, k), (1, stride)))


def audio_resnet(cfg: AudioCNNConfig) -> ResNet:
    """2D ResNet over log-mel [N, 1, n_mels, frames]: separable stem, no pooling in the stem, each
    stage strided by `cfg.strides`, its 3 x 3 conv separable where `cfg.separable_stages` says."""
    stem = separable_conv(1, cfg.width, cfg.stem_kernel, inner_norm=cfg.separable_inner_norm)

    def block(c_in: int, c_inner: int, c_out: int, stride: int, stage: int) -> Bottleneck:
        middle = (separable_conv(c_inner, c_inner, 3, stride, cfg.separable_inner_norm)
                  if cfg.separable_stages[stage] else Conv2dNormActivation(c_inner, c_inner, 3, stride))
        branch = nn.Sequential(
            Conv2dNormActivation(c_in, c_inner, 1),
            middle,
            Conv2dNormActivation(c_inner, c_out, 1, activation_layer=None))
        return Bottleneck(branch, _shortcut(Conv2dNormActivation, c_in, c_out, stride))

    return ResNet(stem, block, cfg.width, cfg.depths, cfg.strides)

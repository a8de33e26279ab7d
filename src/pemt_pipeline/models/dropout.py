"""Dropout that saves its mask for backward as bool.

On CPU, nn.Dropout (F.dropout) multiplies by a float noise tensor and autograd keeps it: 4 bytes an
element of every dropped activation. torch.native_dropout draws the same mask from the same
generator (the values are identical for a seed) and keeps it as bool, 1 byte an element: the paper
Transformers' saved activations fall by about a tenth (benchmarks/bench_model.py, `act MB`). On CUDA
F.dropout already runs native_dropout; in eval mode (or p = 0) this is nn.Dropout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class Dropout(nn.Dropout):
    """nn.Dropout(p) computing torch.native_dropout in training mode (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or self.p == 1.0 or self.inplace:
            return super().forward(x)
        return torch.native_dropout(x, self.p, True)[0]

"""Linears that read the same input applied in one autograd node (Q, K and V; one FFN half), over
the tokens of several groups at once where the groups share U (the low-rank layers of the visual
and audio Transformers at one depth).

`project(rows, x, sizes)`: rows[g] = the k linears of group g, x [T, N] the groups' tokens one
after another (sizes[g] rows each) -> k tensors [T, M_j], where rows [lo_g, lo_g + sizes[g]) are
rows[g][j] applied to group g's tokens. The values are those of calling each module on its own
(within float rounding: a product over more rows may round differently; equal for one group):
- one group, or every group the same modules: nn.Linear -> F.linear each (GELU recomputed in
  backward rather than saved, for the FFN's second half); FactorizedLinear -> one
  `factorized_product` over every token;
- FactorizedLinear modules of different groups sharing U: `factorized_product` with the groups'
  own V and Sigma and one product with U over every group's tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from .factorized import FactorizedLinear, apply_autocast, factorized_product


def project(rows: list[list[nn.Module]], x: Tensor, sizes: list[int], gelu: bool = False) -> tuple[Tensor, ...]:
    """rows[g][j](GELU(x_g) if gelu else x_g) for every group g and linear j, stacked by group:
    x [T, N] -> k tensors [T, M_j] (see the module docstring)."""
    first = rows[0]
    if all(isinstance(lin, FactorizedLinear) for row in rows for lin in row):
        if any(lin.u is not ref.u for row in rows for lin, ref in zip(row, first)):
            raise ValueError("groups of factorised linears must share U")
        if all(lin is ref for row in rows for lin, ref in zip(row, first)):
            rows, sizes = [first], [sum(sizes)]
        return factorized_product(x, sizes, [[lin.v.weight for lin in row] for row in rows],
                                  [[lin.sigma.weight for lin in row] for row in rows],
                                  [lin.u.weight for lin in first], [lin.u.bias for lin in first], gelu)
    if all(type(lin) is nn.Linear for lin in first) and all(row == first for row in rows):
        if gelu:
            return tuple(apply_autocast(_GeluLinear, x, lin.weight, lin.bias) for lin in first)
        return tuple(F.linear(x, lin.weight, lin.bias) for lin in first)
    kinds = sorted({type(lin).__name__ for row in rows for lin in row})
    raise TypeError(f"project() takes FactorizedLinear modules, or the same nn.Linear modules for every group, "
                    f"not {kinds}")


class _GeluLinear(torch.autograd.Function):
    """F.linear(GELU(x), w, b), saving x only (GELU(x) is recomputed in backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return F.linear(F.gelu(x), w, b)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, w = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])  # [T, M]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.aten.gelu_backward(dy @ w, x)
        if ctx.needs_input_grad[1]:
            dw = dy2.t() @ F.gelu(x).reshape(-1, x.shape[-1])  # [M, N]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db

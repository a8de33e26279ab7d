"""The model's linears (nn.Linear or the shared low-rank FactorizedLinear) seen as two halves.

A linear maps x -> finish(first(x)) with a LINEAR `first` whenever its input is fixed, so a
convolution can be folded around it:
- nn.Linear (N -> M):        features(x) = x,                 y = W x + b
- FactorizedLinear (N -> M): features(x) = normalize(V^T x),  y = (U Sigma) features(x) + b
The output side (`out_weight`, `out_bias`) acts on `features`. On the input side the first map
is linear in x (`in_weight`: W, or V^T) and `finish` does the rest (dense: + b; low rank:
U Sigma normalize(.) + b), so lin(z) == finish(lin, z @ in_weight(lin).T).
FactorizedLinear's normalisation makes the whole map non-linear, which is why these halves exist.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .factorized import FactorizedLinear


def _check(lin: nn.Module) -> bool:
    if isinstance(lin, FactorizedLinear):
        return True
    if isinstance(lin, nn.Linear):
        return False
    raise TypeError(f"pruning supports nn.Linear and FactorizedLinear, not {type(lin).__name__}")


def features(lin: nn.Module, x: Tensor) -> Tensor:
    """x [..., N] -> [..., N] (dense) or normalize(V^T x) [..., O] (low rank)."""
    return F.normalize(lin.v(x), dim=-1) if _check(lin) else x


def out_weight(lin: nn.Module) -> Tensor:
    """[M, n_features]: W (dense) or U Sigma (low rank); lin(x) = out_weight @ features(x) + b."""
    return lin.u.weight @ lin.sigma.weight if _check(lin) else lin.weight


def out_bias(lin: nn.Module) -> Tensor | None:
    return lin.u.bias if _check(lin) else lin.bias


def linear_part(lin: nn.Module, x: Tensor) -> Tensor:
    """lin(x) without its bias, [..., M]."""
    if _check(lin):
        return F.linear(lin.sigma(features(lin, x)), lin.u.weight)
    return F.linear(x, lin.weight)


def in_weight(lin: nn.Module) -> Tensor:
    """[n_first, N]: W (dense) or V^T (low rank), the linear first map of the input."""
    return lin.v.weight if _check(lin) else lin.weight


def finish(lin: nn.Module, w: Tensor) -> Tensor:
    """The rest of lin after in_weight: w [..., n_first] -> [..., M]."""
    if _check(lin):
        return lin.u(lin.sigma(F.normalize(w, dim=-1)))
    return w if lin.bias is None else w + lin.bias


def rows(lin: nn.Module, x: Tensor, idx: Tensor) -> Tensor:
    """lin(x)[..., idx] computing only those outputs: x [..., N] -> [..., len(idx)]."""
    if _check(lin):
        h = lin.sigma(features(lin, x))
        return F.linear(h, lin.u.weight.index_select(0, idx), _take(lin.u.bias, idx))
    return F.linear(x, lin.weight.index_select(0, idx), _take(lin.bias, idx))


def cols(lin: nn.Module, h: Tensor, idx: Tensor) -> Tensor:
    """lin applied to an input that is zero outside `idx`: h [..., len(idx)] -> [..., M]."""
    if _check(lin):
        return finish(lin, F.linear(h, lin.v.weight.index_select(1, idx)))
    return F.linear(h, lin.weight.index_select(1, idx), lin.bias)


def rank_of(lin: nn.Module) -> int | None:
    return lin.u.in_features if _check(lin) else None


def _take(bias: Tensor | None, idx: Tensor) -> Tensor | None:
    return None if bias is None else bias.index_select(0, idx)

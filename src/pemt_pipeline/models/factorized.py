"""Low-rank linear shared across modality groups: W_g = U Sigma_g V_g^T (METHOD.md section 2)."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.parametrizations import orthogonal


def linear(in_features: int, out_features: int, init_std: float, bias: bool = True) -> nn.Linear:
    """nn.Linear with BERT's initialisation: weight ~ N(0, init_std), bias 0."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.normal_(layer.weight, std=init_std)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class FactorizedLinear(nn.Module):
    """y = U(Sigma(normalize(V^T x))) + b for one modality group.

    `u` (an nn.Linear(rank, out_features) holding U and the bias b) is passed in and may be the
    same module in several groups; V and the orthogonal Sigma are this group's own.
    """

    def __init__(self, u: nn.Linear, in_features: int, orthogonal_map: str, init_std: float = 0.02):
        super().__init__()
        rank = u.in_features
        self.u = u  # shared: [out, rank] + bias [out]
        self.v = linear(in_features, rank, init_std, bias=False)  # private V^T: [rank, in]
        self.sigma = nn.Linear(rank, rank, bias=False)  # private, orthogonal: [rank, rank]
        if self.sigma.weight.is_meta:  # built only to count: the parametrisation adds no parameter
            return
        nn.init.orthogonal_(self.sigma.weight)
        # Trivialisation: Sigma = base @ map(original), `original` [rank, rank] is the parameter.
        orthogonal(self.sigma, orthogonal_map=orthogonal_map)

    def forward(self, x: Tensor) -> Tensor:
        return self.u(self.sigma(F.normalize(self.v(x), dim=-1)))


def factorized_group(in_features: int, out_features: int, rank: int, n_groups: int,
                     orthogonal_map: str, init_std: float = 0.02) -> list[FactorizedLinear]:
    """One factorised linear per group, all sharing one U (with bias).

    U is drawn with std init_std * sqrt(in_features), not init_std: normalize() gives U a unit
    vector, discarding the input's scale (||x|| ~ sqrt(in_features) after LayerNorm), so this
    gives the factorised layer the output scale of a dense layer initialised with init_std. With
    plain init_std its outputs start ~sqrt(in_features) times smaller and, in a post-LN layer,
    the attention and FFN branches barely move the residual stream: the summary (BOS) outputs
    were input-independent (std across videos 1e-3 of their norm) and CPP stayed at chance."""
    u = linear(rank, out_features, init_std * in_features ** 0.5)
    return [FactorizedLinear(u, in_features, orthogonal_map, init_std) for _ in range(n_groups)]

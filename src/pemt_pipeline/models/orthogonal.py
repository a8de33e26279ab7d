"""Sigma's orthogonal parametrisation: torch's `orthogonal`, with a cheaper backward for matrix_exp.

torch differentiates Q = expm(A) through expm of the block matrix [[A^T, G], [0, A^T]] (its
upper-right block is the gradient). Its cost grows with the norm of the incoming gradient G, which
is large (hundreds) in training: scaling and squaring then spends ~18 products of 2n x 2n matrices
per Sigma, a fifth of a low-rank training step on CPU. The upper-right block is linear in G, so
`_MatrixExp` runs the same formula on G / s (s the power of two that brings G's 1-norm to at most 1)
and multiplies back by s (exact): the same gradient within float rounding at a few products.
Forward values are torch's (the same `torch.linalg.matrix_exp` call), and so are the state-dict keys
(`parametrizations.weight.original`, `parametrizations.weight.0.base`) and `right_inverse`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _Orthogonal, _OrthMaps


def orthogonal(module: nn.Linear, orthogonal_map: str) -> None:
    """Make `module.weight` (square) orthogonal, as torch.nn.utils.parametrizations.orthogonal(module,
    orthogonal_map=...) does: the same parametrisation and keys, with `_MatrixExp` for matrix_exp."""
    weight = module.weight
    parametrization = _Orthogonal if orthogonal_map != "matrix_exp" else _OrthogonalExp
    parametrize.register_parametrization(module, "weight", parametrization(weight, _OrthMaps[orthogonal_map]),
                                         unsafe=True)


class _OrthogonalExp(_Orthogonal):
    """torch's _Orthogonal for square matrices and the matrix_exp map, differentiated by _MatrixExp."""

    def forward(self, X: Tensor) -> Tensor:
        if X.shape[-1] != X.shape[-2] or X.is_complex():
            return super().forward(X)
        X = X.tril()
        Q = _MatrixExp.apply(X - X.mH)  # expm of a skew-symmetric matrix: orthogonal
        return self.base @ Q if hasattr(self, "base") else Q


class _MatrixExp(torch.autograd.Function):
    """Q = expm(A) (torch.linalg.matrix_exp); backward = upper-right block of
    s * expm([[A^T, G / s], [0, A^T]]) with s = 2^ceil(log2 max(1, ||G||_1))."""

    @staticmethod
    def forward(ctx, A: Tensor) -> Tensor:
        ctx.save_for_backward(A)
        return torch.linalg.matrix_exp(A)

    @staticmethod
    def backward(ctx, G: Tensor) -> Tensor:
        (A,) = ctx.saved_tensors
        n = A.shape[-1]
        norm = G.abs().sum(-2).amax(-1, keepdim=True)[..., None]  # 1-norm (largest column sum): [..., 1, 1]
        s = torch.exp2(torch.ceil(torch.log2(norm.clamp_min(1.0))))
        block = A.new_zeros(*A.shape[:-2], 2 * n, 2 * n)
        block[..., :n, :n] = A.mH
        block[..., n:, n:] = A.mH
        block[..., :n, n:] = G / s
        return torch.linalg.matrix_exp(block)[..., :n, n:] * s

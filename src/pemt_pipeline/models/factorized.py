"""Low-rank linear shared across modality groups: W_g = U Sigma_g V_g^T (METHOD.md section 2)."""

from __future__ import annotations

from itertools import accumulate

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .orthogonal import orthogonal

NORM_EPS = 1e-12  # F.normalize's default


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
        orthogonal(self.sigma, orthogonal_map)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1]
        return factorized_product(x, [rows], [[self.v.weight]], [[self.sigma.weight]], [self.u.weight],
                                  [self.u.bias])[0]


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


def factorized_product(x: Tensor, sizes: list[int], vs: list[list[Tensor]], sigmas: list[list[Tensor]],
                       us: list[Tensor], biases: list[Tensor], gelu: bool = False) -> tuple[Tensor, ...]:
    """y_j = U_j Sigma_gj normalize(V_gj^T a) + b_j for the k linears j that read a = GELU(x) or x.

    x [..., N] holds the tokens of G groups, group g the `sizes[g]` rows after the previous ones
    (of x flattened to [T, N]); group g has its own V_gj^T (vs[g][j], [O, N]) and Sigma_gj
    (sigmas[g][j], [O, O]), all groups share U_j (us[j], [M_j, O]) and b_j: one product with U_j
    over every group's tokens. -> k tensors [..., M_j]. The values of the modules' eager graph
    with less saved for backward: x and normalize(V^T a) with its norms (one [.., O] per linear and
    token, where the eager graph saves three); Sigma's product (O^2 per token) and GELU are
    recomputed."""
    return apply_autocast(_FactorizedProduct, x, tuple(sizes), gelu, len(us), *(t for row in vs for t in row),
                          *(t for row in sigmas for t in row), *us, *biases)


class _FactorizedProduct(torch.autograd.Function):
    """factorized_product's forward and backward (arguments flattened: G*k V's, G*k Sigmas, k U's,
    k biases; group-major). Saves x, n_g = normalize(V_g^T a_g) [k, T_g, O] and its clamped norms."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: tuple[int, ...], gelu: bool, k: int, *factors: Tensor):
        G = len(sizes)
        vs, sigmas = factors[:G * k], factors[G * k:2 * G * k]
        us, biases = factors[2 * G * k:2 * G * k + k], factors[2 * G * k + k:]
        rank = us[0].shape[1]
        a = x.reshape(-1, x.shape[-1])  # [T, N]
        a = F.gelu(a) if gelu else a
        s = a.new_empty(k, a.shape[0], rank)  # Sigma_gj normalize(V_gj^T a_g), every group: [k, T, O]
        ns, cs = [], []
        for g, (lo, a_g) in enumerate(zip(accumulate(sizes, initial=0), a.split(sizes))):
            h = a_g.new_empty(k, a_g.shape[0], rank)  # [k, T_g, O]
            for j in range(k):
                torch.mm(a_g, vs[g * k + j].t(), out=h[j])
            acc = torch.promote_types(h.dtype, torch.float32)  # norms in float32 at least (as autocast does)
            c = torch.linalg.vector_norm(h, dim=-1, keepdim=True, dtype=acc).clamp_min(NORM_EPS)  # [k, T_g, 1]
            n = (h / c).to(h.dtype)
            for j in range(k):
                torch.mm(n[j], sigmas[g * k + j].t(), out=s[j, lo:lo + a_g.shape[0]])
            ns.append(n)
            cs.append(c)
        lead = x.shape[:-1]
        ys = tuple(torch.addmm(biases[j], s[j], us[j].t()).view(*lead, -1) for j in range(k))
        ctx.sizes, ctx.gelu, ctx.k = sizes, gelu, k
        ctx.save_for_backward(x, *ns, *cs, *vs, *sigmas, *us)
        return ys

    @staticmethod
    def backward(ctx, *dys: Tensor):
        sizes, k, G = ctx.sizes, ctx.k, len(ctx.sizes)
        x, *saved = ctx.saved_tensors
        ns, cs, saved = saved[:G], saved[G:2 * G], saved[2 * G:]
        vs, sigmas, us = saved[:G * k], saved[G * k:2 * G * k], saved[2 * G * k:]
        need = ctx.needs_input_grad[4:]  # G*k V's, G*k Sigmas, k U's, k biases
        grads: list[Tensor | None] = [None] * len(need)
        a = x.reshape(-1, x.shape[-1])  # [T, N]
        a = F.gelu(a) if ctx.gelu else a
        dys = [dy.reshape(-1, dy.shape[-1]) for dy in dys]  # [T, M_j]
        ds = []  # [T, O] per j
        for j in range(k):
            if need[2 * G * k + j]:  # U_j: Sigma's outputs recomputed, every group at once
                s = torch.cat([n[j] @ sigmas[g * k + j].t() for g, n in enumerate(ns)])
                grads[2 * G * k + j] = dys[j].t() @ s  # [M_j, O]
            if need[2 * G * k + k + j]:
                grads[2 * G * k + k + j] = dys[j].sum(0)
            ds.append(dys[j] @ us[j])
        da = a.new_empty(a.shape) if ctx.needs_input_grad[0] else None
        for g, (lo, a_g) in enumerate(zip(accumulate(sizes, initial=0), a.split(sizes))):
            n, c, rows = ns[g], cs[g], slice(lo, lo + a_g.shape[0])
            dn = torch.empty_like(n)  # [k, T_g, O]
            for j in range(k):
                if need[G * k + g * k + j]:
                    grads[G * k + g * k + j] = ds[j][rows].t() @ n[j]  # Sigma_gj: [O, O]
                torch.mm(ds[j][rows], sigmas[g * k + j], out=dn[j])
            # normalize's backward: (dn - n <n, dn>) / ||h||, or dn / eps where the norm was clamped
            n, dn = n.to(c.dtype), dn.to(c.dtype)
            dh = ((dn - n * ((n * dn).sum(-1, keepdim=True) * (c > NORM_EPS))) / c).to(a.dtype)  # [k, T_g, O]
            for j in range(k):
                if need[g * k + j]:
                    grads[g * k + j] = dh[j].t() @ a_g  # V_gj^T: [O, N]
            if da is not None:
                torch.mm(dh[0], vs[g * k], out=da[rows])
                for j in range(1, k):
                    da[rows].addmm_(dh[j], vs[g * k + j])
        dx = None
        if da is not None:
            dx = torch.ops.aten.gelu_backward(da, x.reshape(da.shape)) if ctx.gelu else da
            dx = dx.view(x.shape)
        return (dx, None, None, None, *grads)


def apply_autocast(function: type[torch.autograd.Function], *args):
    """function.apply(*args); under autocast, with the floating-point tensor arguments cast to the
    autocast dtype first (as autocast casts a matmul's operands) and autocast off inside, so that the
    function's forward and backward each see one dtype."""
    device = next(a for a in args if isinstance(a, Tensor)).device.type
    if not torch.is_autocast_enabled(device):
        return function.apply(*args)
    dtype = torch.get_autocast_dtype(device)
    args = [a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
    with torch.autocast(device, enabled=False):
        return function.apply(*args)

"""The fast paths (models/factorized.py, fused.py, orthogonal.py, transformer.joint_layer) compute
what the plain eager graph of the same modules computes: outputs and gradients in float64 and
float32, every variant, the visual and audio Transformers run together or one after the other."""

import dataclasses
import math

import mpmath
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal as torch_orthogonal

from pemt_pipeline.models import FactorizedLinear, PEMTModel, factorized_group
from pemt_pipeline.models.fused import project
from pemt_pipeline.models.orthogonal import _MatrixExp, expm_frechet, orthogonal
from pemt_pipeline.models.transformer import can_run_jointly
from tests.models.conftest import tiny_config

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def eager_factorized(lin: FactorizedLinear, x: torch.Tensor) -> torch.Tensor:
    """The module graph the custom function replaces: U(Sigma(normalize(V^T x)))."""
    return lin.u(lin.sigma(F.normalize(lin.v(x), dim=-1)))


def eager_layer(layer, x, attn_mask=None):
    """TransformerLayer's forward written with the modules one by one (the code before the fast path)."""
    B, L, D = x.shape
    lin = eager_factorized if isinstance(layer.q, FactorizedLinear) else (lambda m, t: m(t))
    q, k, v = (lin(m, x).view(B, L, layer.n_heads, -1).transpose(1, 2) for m in (layer.q, layer.k, layer.v))
    p = layer.attention_dropout if layer.training else 0.0
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
    x = layer.norm1(x + layer.dropout(lin(layer.o, a.transpose(1, 2).reshape(B, L, D))))
    return layer.norm2(x + layer.dropout(lin(layer.fc2, F.gelu(lin(layer.fc1, x)))))


def grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors, allow_unused=False))


def assert_all_close(xs, ys, dtype):
    for x, y in zip(xs, ys, strict=True):
        torch.testing.assert_close(x, y, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gelu", [False, True])
def test_factorized_product_of_two_groups_equals_each_module_on_its_own(dtype, gelu):
    torch.manual_seed(0)
    groups = [factorized_group(16, m, 4, 2, "matrix_exp") for m in (12, 12, 20)]  # k=3 linears, G=2 groups
    mods = nn.ModuleList([lin for g in groups for lin in g]).to(dtype)
    with torch.no_grad():  # a Sigma away from its initial value (generator A != 0)
        for p in mods.parameters():
            if p.shape == (4, 4):
                p.normal_(0, 0.3)
    xs = [torch.randn(3, 5, 16, dtype=dtype), torch.randn(7, 16, dtype=dtype)]  # groups of 15 and 7 tokens
    xs[1][2] = 0  # a zero row: the norm is clamped at eps, as F.normalize does
    xs = [x.requires_grad_() for x in xs]
    rows = [[g[i] for g in groups] for i in range(2)]
    x = torch.cat([xs[0].reshape(-1, 16), xs[1]])
    w = [torch.randn(22, m, dtype=dtype) for m in (12, 12, 20)]
    params = list(mods.parameters())
    fast = project(rows, x, [15, 7], gelu=gelu)
    loss_fast = sum((y * wj).sum() for y, wj in zip(fast, w))
    act = F.gelu if gelu else (lambda t: t)
    ref = [torch.cat([eager_factorized(rows[0][j], act(xs[0])).reshape(-1, y.shape[-1]),
                      eager_factorized(rows[1][j], act(xs[1]))]) for j, y in enumerate(fast)]
    loss_ref = sum((y * wj).sum() for y, wj in zip(ref, w))
    assert_all_close(fast, ref, dtype)
    assert_all_close(grads(loss_fast, [*xs, *params]), grads(loss_ref, [*xs, *params]), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gelu_linear_equals_eager_and_dense_groups_must_be_one_module(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(16, 8).to(dtype)
    x = torch.randn(10, 16, dtype=dtype, requires_grad=True)
    (fast,) = project([[lin]], x, [10], gelu=True)
    ref = lin(F.gelu(x))
    w = torch.randn_like(ref)
    assert_all_close([fast], [ref], dtype)
    assert_all_close(grads((fast * w).sum(), [x, *lin.parameters()]), grads((ref * w).sum(), [x, *lin.parameters()]),
                     dtype)
    with pytest.raises(TypeError, match="same nn.Linear"):
        project([[lin], [nn.Linear(16, 8).to(dtype)]], x, [5, 5])


def test_factorized_groups_must_share_u():
    a, b = factorized_group(8, 8, 2, 1, "matrix_exp")[0], factorized_group(8, 8, 2, 1, "matrix_exp")[0]
    with pytest.raises(ValueError, match="share U"):
        project([[a], [b]], torch.randn(4, 8), [2, 2])


def _block_expm_gradient(A: torch.Tensor, G: torch.Tensor, exact: bool) -> torch.Tensor:
    """The gradient of <G, expm(A)>: the upper-right block of expm([[A^T, G], [0, A^T]]), in 30-digit
    arithmetic (mpmath) when `exact`, else by torch in A's dtype."""
    n = A.shape[0]
    block = torch.zeros(2 * n, 2 * n, dtype=A.dtype)
    block[:n, :n] = block[n:, n:] = A.T
    block[:n, n:] = G
    if not exact:
        return torch.linalg.matrix_exp(block)[:n, n:]
    with mpmath.workdps(30):
        M = mpmath.expm(mpmath.matrix(block.tolist()))
        return torch.tensor([[float(M[i, n + j]) for j in range(n)] for i in range(n)], dtype=A.dtype)


@pytest.mark.parametrize("n,scale", [(12, 0.0), (12, 0.4), (12, 4.0), (128, 0.03), (128, 3.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matrix_exp_backward_equals_torch_for_a_large_gradient(dtype, n, scale):
    """Against a 30-digit reference (n = 12) or torch's float64 backward (n = 128, itself ~1e-11
    off): float64 to rounding, float32 at least as accurate as torch's own float32 backward."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, n, generator=g, dtype=torch.float64) * scale  # 1-norm of A: 0 to ~300
    A = X.tril() - X.tril().T
    G = torch.randn(n, n, generator=g, dtype=torch.float64) * 300  # training-size gradient norm
    ref = _block_expm_gradient(A, G, exact=n <= 12)
    Ad = A.to(dtype).requires_grad_()
    (fast,) = torch.autograd.grad(_MatrixExp.apply(Ad), Ad, G.to(dtype))
    (torch_grad,) = torch.autograd.grad(torch.linalg.matrix_exp(Ad), Ad, G.to(dtype))
    assert torch.equal(_MatrixExp.apply(Ad), torch.linalg.matrix_exp(Ad))  # the forward is torch's
    err = ((fast.double() - ref).abs().max() / ref.abs().max()).item()
    assert err < (1e-14 if n <= 12 else 1e-9) if dtype == torch.float64 else err < 1e-5
    if dtype == torch.float32:
        assert err <= max(((torch_grad.double() - ref).abs().max() / ref.abs().max()).item(), 1e-7)


def test_expm_frechet_edge_cases():
    E = torch.randn(5, 5, dtype=torch.float64)
    assert torch.allclose(expm_frechet(torch.zeros(5, 5, dtype=torch.float64), E), E, rtol=1e-15, atol=0)  # L(0, E) = E
    assert torch.equal(expm_frechet(torch.randn(5, 5), torch.zeros(5, 5)), torch.zeros(5, 5))
    assert torch.isnan(expm_frechet(torch.full((5, 5), math.inf), torch.ones(5, 5))).all()  # no exception
    assert torch.isnan(expm_frechet(torch.zeros(5, 5), torch.full((5, 5), math.nan))).all()
    X = torch.randn(3, 6, 6, dtype=torch.float64)  # a batch: each matrix's derivative
    A, E = X.tril() - X.tril().mT, torch.randn(3, 6, 6, dtype=torch.float64)
    assert torch.allclose(expm_frechet(A, E), torch.stack([expm_frechet(a, e) for a, e in zip(A, E)]), atol=1e-12)


def _models(dtype, **overrides):
    torch.manual_seed(0)
    model = PEMTModel(tiny_config(**overrides)).to(dtype).eval()
    with torch.no_grad():  # Sigmas away from their initial value
        for name, p in model.named_parameters():
            if "parametrizations" in name:
                p.normal_(0, 0.05)
    return model


VARIANTS = [dict(fusion="mid", share_layers=True, share_transformers="lowrank"),
            dict(fusion="late", share_layers=False, share_transformers="lowrank"),
            dict(fusion="mid", share_layers=True, share_transformers="full"),
            dict(fusion="mid", share_layers=False, share_transformers="none"),
            dict(fusion="early", share_layers=True, share_transformers="none")]


def _forward_backward(model, v, a, mask, w):
    model.zero_grad()
    out = model.contextualize(v, a, mask, mask)
    loss = sum((s.clips * w).sum() + (s.summary * w).sum() for s in out.values())
    loss.backward()
    return [s.clips for s in out.values()] + [s.summary for s in out.values()], {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_model_equals_its_eager_layers_and_sequential_streams(dtype, variant):
    """Fast layers, run jointly where possible == the eager layer graph run one Transformer after the other."""
    model = _models(dtype, **variant)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2, 4, model.visual_cnn.out_dim, generator=g, dtype=dtype)
    a = torch.randn(2, 4, model.audio_cnn.out_dim, generator=g, dtype=dtype)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    w = torch.randn(model.cfg.transformer.hidden, generator=g, dtype=dtype)
    names = [n for n in ("visual", "audio") if n in model.transformers]
    joint = can_run_jointly([model.transformers[n] for n in names])
    assert joint == (len(names) == 2 and variant["share_transformers"] != "none")
    out_fast, grads_fast = _forward_backward(model, v, a, mask, w)
    model.joint_streams = False
    layers = {layer for t in model.transformers.values() for layer in t.layers}
    originals = {layer: layer.forward for layer in layers}
    try:
        for layer in layers:  # the eager graph of the same modules
            layer.forward = lambda x, attn_mask=None, _layer=layer: eager_layer(_layer, x, attn_mask)
        out_ref, grads_ref = _forward_backward(model, v, a, mask, w)
    finally:
        for layer, fwd in originals.items():
            layer.forward = fwd
    real = torch.cat([torch.ones(2, 1, dtype=torch.bool), mask], 1)[..., None]
    assert_all_close([o * real[:, 1:] if o.dim() == 3 else o for o in out_fast],
                     [o * real[:, 1:] if o.dim() == 3 else o for o in out_ref], dtype)
    assert grads_fast.keys() == grads_ref.keys()
    scale = max(g.abs().max() for g in grads_ref.values())  # K's bias has an exactly-zero gradient: absolute
    for name in grads_ref:
        torch.testing.assert_close(grads_fast[name], grads_ref[name], rtol=TOL[dtype]["rtol"],
                                   atol=TOL[dtype]["rtol"] * scale, msg=name)


def test_sigmas_keep_torch_parametrisation_keys_and_right_inverse():
    theirs, ours = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
    torch_orthogonal(theirs, orthogonal_map="matrix_exp")
    orthogonal(ours, "matrix_exp")
    assert list(ours.state_dict()) == list(theirs.state_dict()) == [
        "parametrizations.weight.original", "parametrizations.weight.0.base"]
    model = _models(torch.float64, share_transformers="lowrank")
    sigma = model.transformers["visual"].layers[0].q.sigma
    q = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0]
    with torch.no_grad():
        sigma.weight = q  # right_inverse: the parametrised value becomes q
    torch.testing.assert_close(sigma.weight, q)
    with parametrize.cached():
        assert sigma.weight is sigma.weight  # cached once per forward


def test_joint_streams_flag_and_training_mode_dropout_draws():
    cfg = dataclasses.replace(tiny_config(), fusion="mid", share_transformers="lowrank")
    torch.manual_seed(0)
    model = PEMTModel(cfg).train()
    g = torch.Generator().manual_seed(1)
    v, a = torch.randn(2, 4, model.visual_cnn.out_dim, generator=g), torch.randn(2, 4, model.audio_cnn.out_dim,
                                                                                  generator=g)
    outs = []
    for joint in (True, False):
        model.joint_streams = joint
        torch.manual_seed(3)
        outs.append(model.contextualize(v, a)["visual"].summary)
    # both draw dropout masks, in another order: same distribution, different draws
    assert not torch.allclose(outs[0], outs[1])

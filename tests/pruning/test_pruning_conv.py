"""The convolution built from the attention's (shared) value and output projections."""

import pytest
import torch
import torch.nn.functional as F

from pemt_pipeline.pruning import GatedModel
from tests.pruning.conftest import tiny_model

SEGMENTS = (5, 5)  # multimodal sequence: [BOS_v, v_1..4] [BOS_a, a_1..4]
MASK = torch.tensor([[1, 1, 1, 0, 0, 1, 1, 1, 1, 1], [1] * 10], dtype=torch.bool)


def explicit_conv(layer, x, mask, a, lowrank):
    """y_t = finish(sum_j K_j f(x_{t+j}) + c), K_j = sum_h a_jh first_o^h W_v^h, written out from
    the raw weight tensors with loops (zero outside the real tokens of each segment)."""
    v, o = layer.v, layer.o
    D, H = x.shape[-1], a.shape[1]
    dh = D // H
    if lowrank:
        wv, bv = v.u.weight @ v.sigma.weight, v.u.bias  # [D, O], [D]
        first = o.v.weight  # [O, D]
        f = F.normalize(x @ v.v.weight.T, dim=-1)  # [B, L, O]
    else:
        wv, bv, first, f = v.weight, v.bias, o.weight, x
    k = a.shape[0]
    kernels = [sum(a[j, h] * first[:, h * dh:(h + 1) * dh] @ wv[h * dh:(h + 1) * dh]
                   for h in range(H)) for j in range(k)]  # k x [n_out, n_in]
    c = sum(a[j, h] * first[:, h * dh:(h + 1) * dh] @ bv[h * dh:(h + 1) * dh]
            for j in range(k) for h in range(H))
    B, L = x.shape[:2]
    starts = [0, SEGMENTS[0]]
    z = torch.zeros(B, L, first.shape[0], dtype=x.dtype)
    for b in range(B):
        for t in range(L):
            seg = 0 if t < SEGMENTS[0] else 1
            lo, hi = starts[seg], starts[seg] + SEGMENTS[seg]
            z[b, t] = c
            for j in range(k):
                s = t + j - k // 2
                if lo <= s < hi and mask[b, s]:
                    z[b, t] += kernels[j] @ f[b, s]
    if lowrank:
        return F.normalize(z, dim=-1) @ (o.u.weight @ o.sigma.weight).T + o.u.bias
    return z + o.bias


@pytest.mark.parametrize("sharing", ["lowrank", "none"])
@pytest.mark.parametrize("k", [3, 1])
def test_conv_from_shared_weights_equals_explicit_conv1d(sharing, k):
    gated = GatedModel(tiny_model(share_transformers=sharing))
    layer = gated.transformers["multimodal"].layers[1]
    torch.nn.init.normal_(layer.head_logits)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    y = layer.conv(x, MASK, SEGMENTS, k)
    a = layer.head_logits.softmax(-1) if k == 3 else layer.head_logits[1:2].softmax(-1)
    expected = explicit_conv(layer.layer, x, MASK, a, sharing == "lowrank")
    torch.testing.assert_close(y, expected)
    # the real tokens' outputs ignore what the padded positions hold
    noisy = torch.where(MASK[..., None], x, torch.randn_like(x))
    torch.testing.assert_close(layer.conv(noisy, MASK, SEGMENTS, k)[MASK], y[MASK])


@pytest.mark.parametrize("k", [3, 1])
def test_conv_uses_a_subset_of_the_attention_parameters(k):
    gated = GatedModel(tiny_model(share_transformers="lowrank", share_layers=True))
    layer = gated.transformers["visual"].layers[0]
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    layer.conv(x, None, (5,), k).square().sum().backward()
    attn = layer.layer
    for name in ("q", "k"):
        assert all(p.grad is None for p in getattr(attn, name).parameters())
    for name in ("v", "o"):
        assert all(p.grad is not None for p in getattr(attn, name).parameters())
    used_rows = layer.head_logits.grad.abs().sum(-1) > 0  # kernel positions -1, 0, +1
    assert used_rows.tolist() == ([True, True, True] if k == 3 else [False, True, False])

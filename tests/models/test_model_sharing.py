"""Parameter sharing: aliasing, gradients into the shared U, orthogonal Sigma, full-rank tying."""

import pytest
import torch

from pemt_pipeline.models import FactorizedLinear, factorized_group
from pemt_pipeline.models.transformer import LINEARS


def _layers(model, name):
    return list(model.transformers[name].layers)


def test_cross_layer_sharing_reuses_one_layer(make_model):
    model = make_model(share_layers=True, share_transformers="none")
    for name in ("visual", "audio", "multimodal"):
        layers = _layers(model, name)
        assert len(layers) == 3 and all(layer is layers[0] for layer in layers)
    assert _layers(model, "visual")[0] is not _layers(model, "audio")[0]
    unshared = make_model(share_layers=False, share_transformers="none")
    layers = _layers(unshared, "visual")
    assert len({id(layer) for layer in layers}) == 3


def test_full_rank_sharing_is_one_layer_everywhere(make_model):
    model = make_model(share_layers=True, share_transformers="full")
    layer = _layers(model, "visual")[0]
    assert all(other is layer for name in model.transformers for other in _layers(model, name))


@pytest.mark.parametrize("share_layers", [True, False])
def test_lowrank_shares_u_and_norms_not_v_sigma(make_model, share_layers):
    model = make_model(share_layers=share_layers, share_transformers="lowrank")
    for depth in range(3):
        v, a, m = (_layers(model, n)[depth] for n in ("visual", "audio", "multimodal"))
        assert v is not a and a is not m
        for lin in LINEARS:
            fv, fa, fm = (getattr(layer, lin) for layer in (v, a, m))
            assert isinstance(fv, FactorizedLinear)
            assert fv.u.weight is fa.u.weight is fm.u.weight  # same tensor, not a copy
            assert fv.u.bias is fa.u.bias is fm.u.bias
            assert fv.v.weight is not fa.v.weight and fv.sigma is not fa.sigma
        assert v.norm1.weight is a.norm1.weight is m.norm1.weight
        assert v.norm2.bias is a.norm2.bias is m.norm2.bias
    first, last = _layers(model, "visual")[0], _layers(model, "visual")[-1]
    assert (first.q.u.weight is last.q.u.weight) == share_layers


def test_state_dict_round_trip_keeps_sharing(make_model):
    model = make_model(share_layers=True, share_transformers="lowrank")
    with torch.no_grad():
        model.transformers["visual"].layers[0].q.u.weight.add_(1.0)
    copy = make_model(seed=5, share_layers=True, share_transformers="lowrank")
    copy.load_state_dict(model.state_dict())
    u = copy.transformers["audio"].layers[2].q.u.weight
    assert u is copy.transformers["visual"].layers[0].q.u.weight
    torch.testing.assert_close(u, model.transformers["audio"].layers[0].q.u.weight)


@pytest.mark.parametrize("stream", ["visual", "audio", "multimodal_visual", "multimodal_audio"])
def test_each_stream_loss_sends_gradient_into_shared_u(make_model, make_inputs, stream):
    model = make_model(share_layers=True, share_transformers="lowrank")
    video, audio = make_inputs()
    out = model(video, audio)
    getattr(out, stream).clips.square().sum().backward()
    layer = {n: _layers(model, n)[0] for n in ("visual", "audio", "multimodal")}
    for lin in LINEARS:
        u_grad = getattr(layer["visual"], lin).u.weight.grad
        assert u_grad is not None and u_grad.abs().sum() > 0, lin
    own = "multimodal" if stream.startswith("multimodal") else stream
    assert layer[own].q.v.weight.grad.abs().sum() > 0
    if own != "multimodal":  # the multimodal Transformer runs after the unimodal ones
        assert layer["multimodal"].q.v.weight.grad is None


@pytest.mark.parametrize("orthogonal_map", ["matrix_exp", "cayley", "householder"])
def test_sigma_stays_orthogonal_after_optimiser_steps(make_model, make_inputs, orthogonal_map):
    model = make_model(share_transformers="lowrank", orthogonal_map=orthogonal_map)
    video, audio = make_inputs()
    emb = model.embed_clips(video, audio)
    emb = [e.detach() for e in emb]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sigmas = [m.sigma for m in model.modules() if isinstance(m, FactorizedLinear)]
    before = [s.weight.detach().clone() for s in sigmas]
    for _ in range(5):
        opt.zero_grad()
        out = model.contextualize(*emb)
        (out["multimodal_visual"].clips.square().mean() + out["audio"].summary.sum()).backward()
        opt.step()
    eye = torch.eye(8)
    for sigma, old in zip(sigmas, before):
        w = sigma.weight.detach()
        assert torch.linalg.matrix_norm(w.T @ w - eye) < 1e-4
        assert not torch.allclose(w, old)  # it did train


def test_full_rank_sharing_equals_unshared_model_tied_by_hand(make_model, make_inputs):
    shared = make_model(share_layers=True, share_transformers="full").eval()
    unshared = make_model(seed=3, share_layers=False, share_transformers="none").eval()
    n_shared = shared.parameter_counts()["transformers"]
    assert unshared.parameter_counts()["transformers"] == 9 * n_shared
    # tie by hand: the shared model's state dict names the one layer at every depth of every
    # Transformer, so loading it writes the same weights into all nine distinct layers
    unshared.load_state_dict(shared.state_dict())
    w = [layer.fc1.weight for n in unshared.transformers for layer in _layers(unshared, n)]
    assert len({id(t) for t in w}) == 9 and all(torch.equal(t, w[0]) for t in w)
    video, audio = make_inputs()
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        a, b = shared(video, audio, mask), unshared(video, audio, mask)
    for stream in ("visual", "audio", "multimodal_visual", "multimodal_audio"):
        torch.testing.assert_close(getattr(a, stream).clips, getattr(b, stream).clips)
        torch.testing.assert_close(getattr(a, stream).summary, getattr(b, stream).summary)
    # and it is a real test: perturbing one unshared layer changes the outputs
    with torch.no_grad():
        fc1 = _layers(unshared, "audio")[1].fc1.weight
        fc1.add_(0.1 * torch.randn_like(fc1))  # (a constant shift would vanish in LayerNorm)
        c = unshared(video, audio, mask)
    assert not torch.allclose(c.audio.clips, a.audio.clips)


def test_lowrank_linear_matches_its_formula():
    torch.manual_seed(0)
    f0, f1 = factorized_group(6, 5, rank=3, n_groups=2, orthogonal_map="cayley")
    x = torch.randn(4, 6)
    for f in (f0, f1):
        h = x @ f.v.weight.T
        h = h / h.norm(dim=-1, keepdim=True)
        expected = h @ f.sigma.weight.T @ f.u.weight.T + f.u.bias
        torch.testing.assert_close(f(x), expected)
    assert not torch.allclose(f0(x), f1(x))

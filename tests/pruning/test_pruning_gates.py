"""Gates per (Transformer, depth) around shared weights; all-attention gates are the model."""

import pytest
import torch

from pemt_pipeline.models import FactorizedLinear
from pemt_pipeline.pruning import GatedModel, ste
from pemt_pipeline.models import full_architecture
from tests.pruning.conftest import embeddings, mixed_architecture, tiny_model, videos

VARIANTS = [("mid", True, "lowrank"), ("mid", False, "lowrank"), ("early", True, "full"),
            ("late", False, "none")]


def _same(a, b) -> bool:
    return all(torch.equal(x.summary, y.summary) and torch.equal(x.clips, y.clips)
               for x, y in zip(a.values(), b.values())) and a.keys() == b.keys()


@pytest.mark.parametrize("fusion,share_layers,sharing", VARIANTS)
def test_all_attention_gates_reproduce_the_model_exactly(fusion, share_layers, sharing):
    model = tiny_model(dtype=torch.float32, fusion=fusion, share_layers=share_layers,
                       share_transformers=sharing)
    v, a, mask = embeddings(model)
    ref = model.contextualize(v, a, mask, mask)
    gated = GatedModel(model)  # searching, every score > 0: attention, all units kept
    assert gated.searching and gated.architecture() == full_architecture(model.cfg)
    assert _same(gated.contextualize(v, a, mask, mask), ref)
    gated.set_architecture(full_architecture(model.cfg))  # fixed: only the chosen ops run
    assert not gated.searching and _same(gated.contextualize(v, a, mask, mask), ref)
    video, audio, clip_mask = videos(model)
    out, ref_out = gated(video, audio, clip_mask), model(video, audio, clip_mask)
    assert torch.equal(out.audio_embeddings, ref_out.audio_embeddings)
    for name in ("visual", "audio", "multimodal_visual", "multimodal_audio"):
        x, y = getattr(out, name), getattr(ref_out, name)
        assert (x is None) == (y is None)
        assert x is None or (torch.equal(x.clips, y.clips) and torch.equal(x.summary, y.summary))


def test_all_attention_gates_reproduce_training_mode_with_dropout():
    model = tiny_model(dtype=torch.float32).train()
    for m in model.modules():  # dropout back on (attention probabilities and outputs)
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.1
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    model.joint_streams = False  # the gated model runs one Transformer after the other: the same dropout draws
    v, a, mask = embeddings(model)
    torch.manual_seed(7)
    ref = model.contextualize(v, a, mask, mask)
    gated = GatedModel(model)
    torch.manual_seed(7)
    assert _same(gated.contextualize(v, a, mask, mask), ref)


def test_gates_differ_per_depth_and_stream_while_weights_stay_shared():
    model = tiny_model(share_layers=True, share_transformers="lowrank")
    n_weights = sum(p.numel() for p in model.parameters())
    gated = GatedModel(model)
    layers = gated.gated_layers()
    # the model's modules, not copies: one TransformerLayer at both depths
    assert gated.visual_cnn is model.visual_cnn
    assert layers["visual"][0].layer is layers["visual"][1].layer is \
        model.transformers["visual"].layers[0]
    assert sum(p.numel() for p in gated.weight_parameters()) == n_weights + 6 * 3 * 4
    assert len(gated.arch_parameters()) == 2 * 6  # gate and unit scores per (stream, depth)
    arch = mixed_architecture(model.cfg)
    gated.set_architecture(arch)
    assert gated.architecture() == arch
    v, a, mask = embeddings(model)
    out = gated.contextualize(v, a, mask, mask)
    sum(s.clips[s.mask].sum() + s.summary.sum() for s in out.values()).backward()
    u = model.transformers["visual"].layers[0].v.u  # shared by every stream and depth
    assert isinstance(model.transformers["audio"].layers[1].v, FactorizedLinear)
    assert u is model.transformers["multimodal"].layers[1].v.u and u.weight.grad is not None
    gated.set_architecture(None)
    assert gated.searching


def test_straight_through_estimator():
    scores = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    g = ste(scores)
    assert g.tolist() == [0.0, 1.0, 1.0]
    g.sum().backward()
    p = torch.sigmoid(scores.detach())
    torch.testing.assert_close(scores.grad, p * (1 - p))


def test_hard_gates_read_as_an_architecture():
    gated = GatedModel(tiny_model())
    layers = gated.gated_layers()["audio"]
    with torch.no_grad():
        layers[0].gate_scores.copy_(torch.tensor([-1.0, 1.0, -1.0]))  # conv, kernel 3
        layers[0].ffn_scores[:10] = -1.0
        layers[1].gate_scores.copy_(torch.tensor([-1.0, -1.0, -1.0]))  # conv, kernel 1, skip
    assert gated.architecture()["audio"] == [{"op": "conv3", "ffn_units": 22},
                                             {"op": "skip", "ffn_units": 32}]
    with torch.no_grad():
        layers[1].gate_scores[2] = 1.0  # keep the kernel-1 conv
    assert gated.architecture()["audio"][1]["op"] == "conv1"
    with pytest.raises(ValueError, match="ffn_units"):
        bad = full_architecture(gated.cfg)
        bad["audio"][0]["ffn_units"] = 33
        gated.set_architecture(bad)

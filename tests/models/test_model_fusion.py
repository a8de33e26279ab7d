"""The fused model: shapes per fusion, padding, [MASK] clips, determinism, bf16 autocast."""

import dataclasses

import pytest
import torch

from pemt_pipeline.models import PEMTModel

B, T = 2, 4  # videos, clips per video (the tiny config's max_clips)

STREAMS = {"early": {"multimodal_visual", "multimodal_audio"},
           "mid": {"visual", "audio", "multimodal_visual", "multimodal_audio"},
           "late": {"visual", "audio"}}
ALL_STREAMS = ("visual", "audio", "multimodal_visual", "multimodal_audio")


@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
@pytest.mark.parametrize("share_transformers", ["none", "lowrank"])
def test_output_shapes(make_model, make_inputs, fusion, share_transformers):
    model = make_model(fusion=fusion, share_transformers=share_transformers)
    video, audio = make_inputs(batch=B, clips=T)
    out = model(video, audio)
    assert out.visual_embeddings.shape == (B, T, model.visual_cnn.out_dim) == (B, T, 128)
    assert out.audio_embeddings.shape == (B, T, model.audio_cnn.out_dim) == (B, T, 128)
    assert out.clip_mask.shape == (B, T) and out.clip_mask.all()
    present = {s for s in ALL_STREAMS if getattr(out, s) is not None}
    assert present == STREAMS[fusion]
    for s in present:
        stream = getattr(out, s)
        assert stream.summary.shape == (B, 32) and stream.clips.shape == (B, T, 32)
        assert stream.mask.shape == (B, T) and stream.mask.dtype == torch.bool
        assert torch.isfinite(stream.clips).all()
    assert sorted(model.transformers) == sorted(
        {"early": ["multimodal"], "mid": ["visual", "audio", "multimodal"],
         "late": ["visual", "audio"]}[fusion])


@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
def test_padded_clips_do_not_change_real_outputs(make_config, make_inputs, fusion):
    # train mode (BatchNorm batch statistics) with dropout off, so outputs are deterministic
    cfg = make_config(fusion=fusion)
    cfg = dataclasses.replace(cfg, transformer=dataclasses.replace(
        cfg.transformer, dropout=0.0, attention_dropout=0.0))
    torch.manual_seed(0)
    model = PEMTModel(cfg).train()
    video, audio = make_inputs(batch=B, clips=T)
    n_real = 2  # video 1 has 2 real clips, then padding
    mask = torch.tensor([[True] * T, [True] * n_real + [False] * (T - n_real)])
    junk_v, junk_a = make_inputs(seed=9, batch=B, clips=T)
    video2, audio2 = video.clone(), audio.clone()
    video2[1, n_real:], audio2[1, n_real:] = junk_v[1, n_real:], junk_a[1, n_real:]
    out1, out2 = model(video, audio, mask), model(video2, audio2, mask)
    # the same videos without the padding: video 1 alone with its real clips only
    short = model(video[1:, :n_real], audio[1:, :n_real])
    for s in STREAMS[fusion]:
        a, b, c = getattr(out1, s), getattr(out2, s), getattr(short, s)
        torch.testing.assert_close(a.clips[:, :n_real], b.clips[:, :n_real])
        torch.testing.assert_close(a.clips[0], b.clips[0])
        torch.testing.assert_close(a.summary, b.summary)
        assert torch.equal(a.mask, mask)
    assert torch.equal(out1.visual_embeddings[1, n_real:], torch.zeros(T - n_real, 128))
    # BatchNorm in train mode: the CNN saw a different batch for `short`, so compare in eval
    model.eval()
    out1, short = model(video, audio, mask), model(video[1:, :n_real], audio[1:, :n_real])
    for s in STREAMS[fusion]:
        a, c = getattr(out1, s), getattr(short, s)
        torch.testing.assert_close(a.clips[1, :n_real], c.clips[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.summary[1], c.summary[0], atol=1e-5, rtol=1e-4)


def test_mep_mask_replaces_clip_tokens(make_model, make_inputs):
    model = make_model().eval()
    video, audio = make_inputs(batch=B, clips=T)
    masked = torch.zeros(B, T, dtype=torch.bool)
    masked[0, 1] = True
    video2 = video.clone()
    video2[0, 1] = torch.randn_like(video2[0, 1])  # change the masked clip's content
    with torch.no_grad():
        plain = model(video, audio)
        a = model(video, audio, visual_mep_mask=masked)
        b = model(video2, audio, visual_mep_mask=masked)
    # the CNN embedding (MEP's target) still sees the clip ...
    assert not torch.allclose(a.visual_embeddings[0, 1], b.visual_embeddings[0, 1])
    # ... the Transformers do not: with the clip masked its content changes no output
    for s in ALL_STREAMS:
        torch.testing.assert_close(getattr(a, s).clips, getattr(b, s).clips)
    assert not torch.allclose(a.visual.clips, plain.visual.clips)
    # the [MASK] embedding is learned: it receives gradient
    model.train()
    model(video, audio, visual_mep_mask=masked).visual.clips[0, 1].square().sum().backward()
    assert model.mask_token["visual"].grad.abs().sum() > 0
    assert model.mask_token["audio"].grad is None


def test_contextualize_accepts_separate_audio_mask(make_model):
    """CPP builds mismatched pairs from CNN embeddings; their masks may differ."""
    model = make_model().eval()
    v, a = torch.randn(B, T, 128), torch.randn(B, T, 128)
    vm = torch.ones(B, T, dtype=torch.bool)
    am = torch.tensor([[True, True, False, False], [True] * T])
    out = model.contextualize(v, a, vm, am)
    assert torch.equal(out["multimodal_audio"].mask, am) and torch.equal(out["visual"].mask, vm)


def test_seeded_forward_is_deterministic(make_model, make_inputs):
    video, audio = make_inputs(batch=B, clips=T)
    outs = []
    for _ in range(2):
        model = make_model(seed=7).train()  # dropout on
        torch.manual_seed(123)
        outs.append(model(video, audio))
    for s in ALL_STREAMS:
        assert torch.equal(getattr(outs[0], s).clips, getattr(outs[1], s).clips)
    assert torch.equal(outs[0].visual_embeddings, outs[1].visual_embeddings)
    torch.manual_seed(124)
    other = make_model(seed=7).train()(video, audio)
    assert not torch.equal(outs[0].visual.clips, other.visual.clips)  # dropout is on


# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%); through the CNNs and 3 + 3
# Transformer layers we see 0.4-0.8% relative L2 error and accept up to 2% (not zero: bf16 ran).
BF16_REL_TOL = 0.02


@pytest.mark.parametrize("share_transformers", ["none", "lowrank"])
def test_bf16_autocast_agrees_with_fp32(make_model, make_inputs, share_transformers):
    model = make_model(share_transformers=share_transformers).eval()
    video, audio = make_inputs(batch=B, clips=T)
    with torch.no_grad():
        ref = model(video, audio)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(video, audio)
    pairs = [(ref.visual_embeddings, low.visual_embeddings),
             (ref.audio_embeddings, low.audio_embeddings)]
    pairs += [(getattr(ref, s).clips, getattr(low, s).clips) for s in ALL_STREAMS]
    for ref_t, low_t in pairs:
        rel = (low_t.float() - ref_t).norm() / ref_t.norm()
        assert 0 < rel < BF16_REL_TOL, rel

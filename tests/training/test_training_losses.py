"""Pretraining objectives: MEP (InfoNCE over in-batch negatives), masking, CPP, the full objective."""

from __future__ import annotations

import math

import pytest
import torch

from pemt_pipeline.models import ModelConfig, PEMTModel, StreamOutput
from pemt_pipeline.training import (LossConfig, MEPHead, PretrainingObjective, cpp_loss, cpp_pairs, mask_positions,
                                    mep_loss)
from pemt_pipeline.models import CPPHead, cpp_summary
D = 16



def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while len(h) < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


def identity_head(scale: float) -> MEPHead:
    """f(h) = h for zero-mean +-1 vectors (GELU then LayerNorm standardise them back), W = scale I."""
    head = MEPHead(D, D)
    with torch.no_grad():
        head.f[0].weight.copy_(torch.eye(D))
        head.f[0].bias.zero_()
        head.w.copy_(scale * torch.eye(D))
    return head


def orthogonal_targets(B: int = 3, T: int = 5) -> torch.Tensor:
    """[B, T, D]: distinct orthogonal zero-mean +-1 rows (Hadamard rows 1..B*T)."""
    return hadamard(D)[1:B * T + 1].view(B, T, D)


def test_mep_perfect_prediction_gives_zero_loss_and_full_top1():
    x = orthogonal_targets()
    mask = torch.ones(3, 5, dtype=torch.bool)
    loss, top1 = mep_loss(identity_head(10.0), x, x, mask, mask)
    assert loss.item() < 1e-6 and top1.item() == 1.0


def test_mep_uninformative_prediction_gives_log_candidates():
    x = orthogonal_targets()
    clip_mask = torch.ones(3, 5, dtype=torch.bool)
    clip_mask[2, 3:] = False  # padding: never a candidate
    outputs = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(0))
    loss, top1 = mep_loss(identity_head(0.001), outputs, x, clip_mask, clip_mask)
    n_candidates = torch.tensor([1 + 8, 1 + 8, 1 + 10]).repeat_interleave(torch.tensor([5, 5, 3]))
    assert loss.item() == pytest.approx(n_candidates.float().log().mean().item(), abs=0.01)
    assert top1.item() < 0.5


def test_mep_other_videos_are_negatives_and_own_video_clips_are_not():
    x = orthogonal_targets()
    mask = torch.ones(3, 5, dtype=torch.bool)
    head = identity_head(10.0)
    # predicting another video's clip: that negative wins every time
    loss, top1 = mep_loss(head, x.roll(1, dims=0), x, mask, mask)
    assert top1.item() == 0.0 and loss.item() > 100
    # predicting another clip of the SAME video: it is not a candidate, all candidates score 0
    loss, top1 = mep_loss(head, x.roll(1, dims=1), x, mask, mask)
    assert loss.item() == pytest.approx(math.log(1 + 10), abs=1e-4)
    # the same video in two rows: its other row is not a negative either
    video, mep = torch.tensor([0, 1, 0]), torch.tensor([[True], [False], [True]]).expand(3, 5)
    loss, _ = mep_loss(head, x[[2, 1, 0]], x, mep, mask, video_of_position=video)
    assert loss.item() == pytest.approx(math.log(1 + 5), abs=1e-4)


def test_mep_targets_receive_gradient_and_nothing_masked_is_a_zero_loss():
    x = orthogonal_targets().requires_grad_()
    mask = torch.ones(3, 5, dtype=torch.bool)
    head = identity_head(1.0)
    loss, _ = mep_loss(head, torch.randn(3, 5, D), x, mask, mask)
    loss.backward()
    assert x.grad.abs().sum() > 0  # targets are not detached: the CNNs learn through MEP
    outputs = torch.randn(3, 5, D, requires_grad=True)
    loss, top1 = mep_loss(head, outputs, x, torch.zeros_like(mask), mask)
    assert loss.item() == 0.0 and loss.requires_grad and math.isfinite(top1.item())
    loss.backward()
    assert torch.isfinite(outputs.grad).all()


def test_mask_positions_share_padding_and_minimum():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 60, (400,), generator=g)
    clip_mask = torch.arange(60) < lengths[:, None]  # [400, 60], some videos with 0 or 1 clip
    for ratio in (0.15, 0.3):
        mep = mask_positions(clip_mask, ratio, g)
        assert not (mep & ~clip_mask).any()
        assert abs(mep.sum().item() / clip_mask.sum().item() - ratio) < 0.03
        assert mep[clip_mask.sum(1) >= 2].any(1).all()
    short = torch.tensor([[True, True, False]]).expand(500, 3)  # 2 real clips: always >= 1 masked
    assert mask_positions(short, 0.15, g).any(1).all()
    single = torch.tensor([[True, False]]).expand(2000, 2)  # 1 real clip: masked with p = ratio
    share = mask_positions(single, 0.15, g)[:, 0].float().mean().item()
    assert abs(share - 0.15) < 0.03


def test_mask_positions_reproducible_from_the_generator():
    clip_mask = torch.ones(8, 10, dtype=torch.bool)
    a = mask_positions(clip_mask, 0.15, torch.Generator().manual_seed(1))
    b = mask_positions(clip_mask, 0.15, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("batch_size", [2, 3, 4, 7, 8])
def test_cpp_pairs_are_balanced_and_never_match_the_same_video(batch_size):
    g = torch.Generator().manual_seed(batch_size)
    rows = list(range(batch_size))
    for _ in range(50):
        video, audio, label = cpp_pairs(batch_size, g)
        assert len(label) == 2 * batch_size and label.sum().item() == batch_size
        matched = label == 1
        assert torch.equal(video[matched], audio[matched])
        assert (video[~matched] != audio[~matched]).all()
        # every video and every audio track appears once matched and once mismatched
        assert sorted(video[~matched].tolist()) == rows and sorted(audio[~matched].tolist()) == rows
        assert sorted(video[matched].tolist()) == rows


def test_cpp_pairs_of_one_video_is_the_matched_pair():
    video, audio, label = cpp_pairs(1)
    assert video.tolist() == audio.tolist() == [0] and label.tolist() == [1.0]


def test_cpp_head_learns_separable_summaries():
    g = torch.Generator().manual_seed(0)
    labels = (torch.arange(32) % 2).float()
    summary = torch.randn(32, 8, generator=g) * 0.1
    summary[:, 0] += 2 * labels - 1  # the label is in dimension 0
    torch.manual_seed(0)
    head = CPPHead(8)
    loss0, _ = cpp_loss(head, summary, labels)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(60):
        loss, accuracy = cpp_loss(head, summary, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss, accuracy = cpp_loss(head, summary, labels)
    assert accuracy.item() == 1.0 and loss.item() < 0.05 < loss0.item()
    _, flipped_accuracy = cpp_loss(head, summary, 1 - labels)
    assert flipped_accuracy.item() == 0.0


def test_cpp_summary_per_fusion():
    def stream(value):
        return StreamOutput(torch.full((2, 3), float(value)), torch.zeros(2, 4, 3), torch.ones(2, 4, dtype=torch.bool))

    mid = {"visual": stream(1), "audio": stream(2), "multimodal_visual": stream(3), "multimodal_audio": stream(4)}
    assert cpp_summary(mid)[0].tolist() == [3.0] * 3 + [4.0] * 3
    late = {"visual": stream(1), "audio": stream(2)}
    assert cpp_summary(late)[0].tolist() == [1.0] * 3 + [2.0] * 3


def test_loss_config_from_dict():
    assert LossConfig.from_dict({"mask_ratio": 0.2, "cpp": 0.5}) == LossConfig(mask_ratio=0.2, cpp=0.5)
    with pytest.raises(ValueError, match="mep_text"):
        LossConfig.from_dict({"mep_text": 1.0})


# --- the full objective on a tiny model ----------------------------------------------------------

TERMS = {"early": ["mep_multimodal", "cpp"], "mid": ["mep_visual", "mep_audio", "mep_multimodal", "cpp"],
         "late": ["mep_visual", "mep_audio", "cpp"]}


def tiny_model(fusion: str, dropout: float = 0.1) -> PEMTModel:
    torch.manual_seed(0)
    return PEMTModel(ModelConfig.from_dict({
        "fusion": fusion, "rank": 4, "max_clips": 4,
        "visual": {"width": 4, "depths": [1, 1, 1, 1]}, "audio": {"width": 4, "depths": [1, 1, 1, 1]},
        "transformer": {"hidden": 16, "n_layers": 1, "n_heads": 2, "ffn": 32,
                        "dropout": dropout, "attention_dropout": dropout}}))


def tiny_batch(B: int = 4, T: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    clip_mask = torch.ones(B, T, dtype=torch.bool)
    clip_mask[1, 3:] = False
    clip_mask[3, 2:] = False
    return {"video": torch.randn(B, T, 3, 4, 32, 32, generator=g), "audio": torch.randn(B, T, 16, 16, generator=g),
            "clip_mask": clip_mask, "video_index": torch.arange(B), "clip_ids": torch.arange(B * T).view(B, T)}


@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
def test_objective_forward_backward_per_fusion(fusion):
    model = tiny_model(fusion)
    objective = PretrainingObjective(model, LossConfig())
    total, logs = objective(model, tiny_batch(), torch.Generator().manual_seed(0))
    terms = TERMS[fusion]
    expected = set(terms) | {f"{t}_top1" for t in terms if t != "cpp"} | {"cpp_accuracy", "total"}
    assert set(logs) == expected
    assert all(math.isfinite(v) for v in logs.values())
    assert logs["total"] == pytest.approx(sum(logs[t] for t in terms), rel=1e-5)
    total.backward()
    name = next(iter(model.transformers))
    u = model.transformers[name].layers[0].q.u.weight  # U shared by the low-rank Transformers
    for p in (u, model.visual_cnn.stem[0][0].weight, model.audio_cnn.stem[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    for head in (*objective.mep.values(), objective.cpp):
        assert all(p.grad is not None for p in head.parameters())


def test_objective_weights_scale_the_terms():
    model = tiny_model("mid").eval()
    batch = tiny_batch()
    weights = LossConfig(mep_visual=0.5, mep_audio=2.0, mep_multimodal=0.0, cpp=3.0)
    _, logs = PretrainingObjective(model, weights)(model, batch, torch.Generator().manual_seed(0))
    expected = 0.5 * logs["mep_visual"] + 2.0 * logs["mep_audio"] + 3.0 * logs["cpp"]
    assert logs["total"] == pytest.approx(expected, rel=1e-5)


def test_a_few_steps_lower_the_loss():
    model = tiny_model("mid", dropout=0.0)
    objective = PretrainingObjective(model, LossConfig())
    opt = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=3e-3)
    batch, losses = tiny_batch(), []
    for _ in range(8):
        total, logs = objective(model, batch, torch.Generator().manual_seed(0))  # same masks and pairs
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(logs["total"])
    assert losses[-1] < 0.8 * losses[0]

"""A short search on demo data moves FLOPs toward the target; fine-tune and export after it."""

import torch

from pemt_pipeline.models import ModelConfig, PEMTModel
from pemt_pipeline.pruning import (
    FinetuneConfig,
    GatedModel,
    SearchConfig,
    export,
    finetune,
    search,
)
from pemt_pipeline.training.losses import LossConfig, PretrainingObjective
from tests.pruning.conftest import tiny_config


def test_search_moves_flops_toward_target_then_finetune_and_export(demo_batches):
    torch.manual_seed(0)
    model = PEMTModel(tiny_config(fusion="mid"))
    objective = PretrainingObjective(model, LossConfig())
    gated = GatedModel(model, init_score=0.3)
    cfg = SearchConfig(flops_target=0.4, flops_weight=5.0, steps=6, arch_lr=0.1, lr=1e-3, seed=0)
    logs = search(gated, demo_batches, objective, cfg)
    history = logs["history"]
    assert len(history) == 6 and history[0]["flops"] == 1.0
    assert {"mep_visual", "cpp", "penalty", "expected_flops", "loss"} <= set(history[0])
    expected = [h["expected_flops"] for h in history]
    assert all(b < a for a, b in zip(expected, expected[1:]))
    assert abs(logs["flops"] - cfg.flops_target) < abs(1.0 - cfg.flops_target)
    assert logs["flops"] < 1.0 and logs["architecture"] == gated.architecture()

    tuned = finetune(gated, demo_batches, objective, FinetuneConfig(steps=2, lr=1e-3))
    assert not gated.searching and tuned["architecture"] == logs["architecture"]
    pruned = export(gated).eval()
    gated.eval()
    batch = demo_batches[0]
    with torch.no_grad():
        out = pruned(batch["video"], batch["audio"], batch["clip_mask"])
        ref = gated(batch["video"], batch["audio"], batch["clip_mask"])
    for name in ("visual", "audio", "multimodal_visual", "multimodal_audio"):
        torch.testing.assert_close(getattr(out, name).clips, getattr(ref, name).clips)
        torch.testing.assert_close(getattr(out, name).summary, getattr(ref, name).summary)
    assert ModelConfig.from_dict(pruned.cfg.to_dict()) == model.cfg


def test_search_with_frozen_weights_moves_only_the_gates(demo_batches):
    torch.manual_seed(0)
    model = PEMTModel(tiny_config())
    objective = PretrainingObjective(model, LossConfig())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gated = GatedModel(model, init_score=0.3)
    scores = [p.detach().clone() for p in gated.arch_parameters()]
    search(gated, demo_batches[:1], objective, SearchConfig(steps=1, lr=0.0))
    # (the CNNs' BatchNorm statistics do move: the search runs in training mode)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(scores, gated.arch_parameters()))

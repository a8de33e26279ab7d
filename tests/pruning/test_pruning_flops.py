"""Analytic FLOPs against torch.utils.flop_counter, and their expectation under the gates."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from pemt_pipeline.pruning import GatedModel, expected_flops, export, ste_flops, transformer_flops
from pemt_pipeline.models import full_architecture, stream_lengths
from tests.pruning.conftest import embeddings, mixed_architecture, randomize_gates, tiny_model


def _cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(q, k, v)


# flop_counter's table has the CUDA attention kernels; on CPU, SDPA dispatches to
# aten._scaled_dot_product_flash_attention_for_cpu, which it would count as 0: give it the same
# formula (QK^T and PV, 2 x multiply-adds each).
CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}


def counted_transformer_flops(model, clips: int) -> int:
    """flop_counter's FLOPs of `contextualize` minus those of the input projections."""
    v, a, mask = embeddings(model, clips=clips)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as total:
        model.contextualize(v, a, mask, mask)
    with torch.no_grad(), FlopCounterMode(display=False) as projections:
        model.projections["visual"](v), model.projections["audio"](a)
    return total.get_total_flops() - projections.get_total_flops()


@pytest.mark.parametrize("sharing", ["lowrank", "none"])
def test_analytic_flops_agree_with_flop_counter(sharing):
    model = tiny_model(share_transformers=sharing, share_layers=False)
    clips, batch = 3, 2
    full = transformer_flops(model.cfg, None, clips)
    assert full == transformer_flops(model.cfg, full_architecture(model.cfg),
                                     stream_lengths(model.cfg, clips))
    counted = counted_transformer_flops(model, clips)
    # the parametrised model also builds each orthogonal Sigma = base @ matrix_exp(A) once per
    # forward: one O x O product (2 O^3) per private Sigma, not per token (none once exported)
    n_sigmas = sum(1 for n, _ in model.named_parameters() if n.endswith("weight.original"))
    assert counted == batch * full + n_sigmas * 2 * model.cfg.rank ** 3
    assert abs(counted / (batch * full) - 1) < 0.05
    plain = GatedModel(model)
    plain.set_architecture(full_architecture(model.cfg))
    assert counted_transformer_flops(export(plain), clips) == batch * full
    gated = GatedModel(model)
    randomize_gates(gated)
    arch = mixed_architecture(model.cfg)
    gated.set_architecture(arch)
    pruned = export(gated)
    analytic = transformer_flops(model.cfg, arch, clips)
    assert analytic < full
    counted = counted_transformer_flops(pruned, clips)
    assert abs(counted / (batch * analytic) - 1) < 0.01
    assert counted == batch * analytic  # in fact exact


def test_expected_flops_follow_the_gate_probabilities():
    gated = GatedModel(tiny_model(), init_score=30.0)  # probabilities 1: the full model
    full = transformer_flops(gated.cfg)
    assert expected_flops(gated).item() == pytest.approx(full)
    assert ste_flops(gated).item() == full
    arch = mixed_architecture(gated.cfg)
    with torch.no_grad():  # scores at +-30 that select `arch`
        for name, layers in gated.gated_layers().items():
            for layer, entry in zip(layers, arch[name]):
                op = entry["op"]
                gates = (op == "attention", op == "conv3", op != "skip")  # attn, k3, keep
                layer.gate_scores.copy_(torch.tensor([30.0 if g else -30.0 for g in gates]))
                layer.ffn_scores.fill_(-30.0)
                layer.ffn_scores[:entry["ffn_units"]] = 30.0
    assert gated.architecture() == arch
    hard = transformer_flops(gated.cfg, arch)
    assert expected_flops(gated).item() == pytest.approx(hard)
    assert ste_flops(gated).item() == hard
    with torch.no_grad():
        for layers in gated.gated_layers().values():
            for layer in layers:
                layer.gate_scores.zero_()
    assert ste_flops(gated).item() == transformer_flops(gated.cfg, gated.architecture())  # skip
    flops = expected_flops(gated)
    flops.backward()
    assert hard < flops.item() < full
    grads = [layer.gate_scores.grad for ls in gated.gated_layers().values() for layer in ls]
    assert all((g > 0).all() for g in grads)  # attention, kernel 3, keeping: more FLOPs
    gated.set_architecture(arch)  # fixed layers count exactly
    assert expected_flops(gated).item() == pytest.approx(hard)

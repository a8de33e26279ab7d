"""Export a searched (gated) model as a plain `PrunedModel`: its current architecture fixed, conv
kernels materialised from the attention's v and o, the kept FFN units recorded."""

from __future__ import annotations

import torch

from pemt_pipeline.models.architecture import KERNEL
from pemt_pipeline.models.pruned import PrunedConfig, PrunedModel

from .gated import GatedModel
from .spconv import conv_kernel, head_weights


@torch.no_grad()
def export(gated: GatedModel) -> PrunedModel:
    """The gated model's current architecture (fixed, or its hard gates) as a PrunedModel with
    copies of the weights (a fresh model of the configuration with the gated model's state loaded;
    the gated model is left as it is). The clip encoders must be the model's (not a stand-in)."""
    arch = gated.architecture()
    pruned = PrunedModel(PrunedConfig(gated.cfg, arch), gated.source_model())
    for name, ls in gated.gated_layers().items():
        for g, p in zip(ls, pruned.transformers[name].layers):
            p.ffn.units.copy_(g.kept_units())
            if p.op in KERNEL:
                a = head_weights(g.head_logits, KERNEL[p.op])
                kernel, bias = conv_kernel(g.layer.v, g.layer.o, a)
                p.mixer.weight.copy_(kernel)
                p.mixer.bias.copy_(bias)
    return pruned

"""Pruning self-attention into temporal convolution, SPViT-style (no Kedro; METHOD.md section 6).

gated.GatedModel (search space around a model, weights shared) -> search.search (training
objective + lambda (FLOPs/FLOPs_full - target)^2) -> set_architecture + search.finetune ->
export.export (plain PrunedModel) -> export.save_pruned / load_pruned.
"""

from .architecture import OPS, full_architecture, stream_lengths, validate_architecture
from .export import PrunedConfig, PrunedModel, export, load_pruned, pruned_from_state, save_pruned
from .flops import expected_flops, layer_flops, ste_flops, transformer_flops
from .gated import GatedModel, ste
from .search import FinetuneConfig, SearchConfig, finetune, search
from .spconv import conv_kernel, head_weights

__all__ = [
    "OPS", "FinetuneConfig", "GatedModel", "PrunedConfig", "PrunedModel", "SearchConfig",
    "conv_kernel", "expected_flops", "export", "finetune", "full_architecture", "head_weights",
    "layer_flops", "load_pruned", "pruned_from_state", "save_pruned", "search", "ste", "ste_flops", "stream_lengths",
    "transformer_flops", "validate_architecture",
]

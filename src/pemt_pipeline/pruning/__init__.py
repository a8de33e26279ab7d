"""Pruning self-attention into temporal convolution, SPViT-style (no Kedro; METHOD.md section 6).

gated.GatedModel (search space around a model, weights shared) -> search.search (training
objective + lambda (FLOPs/FLOPs_full - target)^2) -> set_architecture + search.finetune ->
export.export (a plain `pemt_pipeline.models.PrunedModel`, saved and loaded by `models.files`).
The run around it: config.PruningConfig (`pruning:` parameters), prune (the training checkpoint,
the frozen-CNN batches, one pruned model per FLOPs target), measure (FLOPs, parameters, latency,
probe, retrieval; `pruning_results`).
"""

from .config import LatencyConfig, PruningConfig, partition_name
from .export import export
from .flops import expected_flops, layer_flops, ste_flops, transformer_flops
from .gated import GatedModel, ste
from .measure import collect_results, contextualize_latency, measure, measure_models, transformer_parameters
from .prune import embed_batches, frozen_clip_encoders, load_pruning_source, prune_models, prune_one
from .search import FinetuneConfig, SearchConfig, finetune, search
from .spconv import conv_kernel, head_weights

__all__ = [
    "FinetuneConfig", "GatedModel", "LatencyConfig", "PruningConfig", "SearchConfig", "collect_results",
    "contextualize_latency", "conv_kernel", "embed_batches", "expected_flops", "export", "finetune",
    "frozen_clip_encoders", "head_weights", "layer_flops", "load_pruning_source", "measure", "measure_models",
    "partition_name", "prune_models", "prune_one", "search", "ste", "ste_flops", "transformer_flops",
    "transformer_parameters",
]

"""Measuring the unpruned model and every pruned one alike: analytic FLOPs of the Transformers per
video, the Transformer parameters the forward pass uses, the latency of the Transformers
(`contextualize`) on a fixed batch, the linear probe per stream and CPP retrieval (the evaluation
library's); and `pruning_results`, the base model against one entry per FLOPs target."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
import torch
from torch.utils import benchmark

from pemt_pipeline.devices import torch_threads
from pemt_pipeline.evaluation.features import VideoFeatures, video_features
from pemt_pipeline.evaluation.probe import ProbeConfig
from pemt_pipeline.evaluation.video import VideoEvalConfig, probe_report, retrieval_report
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.models import PEMTModel, PrunedModel, TrainedModel, full_architecture
from pemt_pipeline.models.streams import plain_copy

from .config import LatencyConfig, PruningConfig, partition_name
from .flops import transformer_flops

OPTIONAL = ("latency_ms_cuda",)  # measured only where CUDA is available


def transformer_parameters(model: PEMTModel) -> int:
    """Scalars of the Transformers' weights that the forward pass uses, each tensor element once:
    all of them unpruned (parameter_counts()["transformers"]), `PrunedModel.used_parameters()`."""
    if isinstance(model, PrunedModel):
        return model.used_parameters()
    return model.parameter_counts()["transformers"]


@torch.inference_mode()
def contextualize_latency(model: PEMTModel, features: VideoFeatures, cfg: LatencyConfig,
                          device: torch.device) -> float:
    """Median milliseconds of `model.contextualize` over the first `cfg.batch_size` videos' clip
    embeddings (the Transformers only), on torch's current number of CPU threads: `cfg.warmup`
    untimed passes, then `cfg.repeats` timed ones, each a `torch.utils.benchmark.Timer.timeit` of
    one pass (which synchronises CUDA around it, after 2 untimed passes of its own)."""
    n = min(cfg.batch_size, len(features.mask))
    v, a, mask = (x[:n].to(device) for x in (features.visual, features.audio, features.mask))
    model = model.eval().to(device)
    for _ in range(cfg.warmup):
        model.contextualize(v, a, mask, mask)
    timer = benchmark.Timer("model.contextualize(v, a, mask, mask)",
                            globals={"model": model, "v": v, "a": a, "mask": mask},
                            num_threads=torch.get_num_threads(), label="contextualize", description=str(device))
    [runs] = benchmark.Measurement.merge(timer.timeit(number=1) for _ in range(cfg.repeats))
    return 1000 * runs.median


def measure(trained: TrainedModel, manifest: pd.DataFrame, cfg: PruningConfig, evaluation: VideoEvalConfig,
            probe: ProbeConfig, augment: AugmentConfig) -> dict[str, Any]:
    """FLOPs (analytic, per video), Transformer parameters, latency, probe per stream, retrieval
    (``{"skipped": why}`` for a model file without a CPP head), on `cfg.threads` CPU threads."""
    model = trained.model
    with torch_threads(cfg.threads):
        features = video_features(model, manifest, augment, evaluation.batch_size, evaluation.device,
                                  evaluation.progress)
        probed = probe_report({"model": features}, manifest, evaluation, probe)
        retrieval = retrieval_report(trained, features, manifest, evaluation, skip_without_head=True)
        pruned = isinstance(model, PrunedModel)
        arch = model.architecture() if pruned else full_architecture(model.cfg)
        # timed as deployed: orthogonal Sigmas as plain matrices (as the exported models hold them), not
        # rebuilt by their parametrisation (a matrix_exp per forward) in the unpruned model
        timed = model if pruned else plain_copy(model)
        out = {"flops": transformer_flops(model.cfg, arch, cfg.search.n_clips),
               "parameters": transformer_parameters(model),
               "latency_ms": contextualize_latency(timed, features, cfg.latency, torch.device("cpu")),
               "latency_device": "cpu", "architecture": arch, "ffn_full": model.cfg.transformer.ffn,
               "probe": probed["model"], "retrieval": retrieval}
        if cfg.latency.cuda and torch.cuda.is_available():
            out["latency_ms_cuda"] = contextualize_latency(timed, features, cfg.latency, torch.device("cuda"))
    model.cpu()
    return out


def measure_models(models: Mapping[str, Callable[[], TrainedModel]], manifest: pd.DataFrame, cfg: PruningConfig,
                   evaluation: VideoEvalConfig, probe: ProbeConfig,
                   augment: AugmentConfig) -> dict[str, dict[str, Any]]:
    """`measure` of every model, loaded one at a time (a partitioned dataset's loaders), by name."""
    return {name: measure(load(), manifest, cfg, evaluation, probe, augment) for name, load in sorted(models.items())}


def collect_results(base: dict[str, Any], pruned: dict[str, dict[str, Any]], logs: dict[str, dict[str, Any]],
                    cfg: PruningConfig, model_file: str | None = None) -> dict[str, Any]:
    """`pruning_results`: the configuration (with the checkpoint pruned, `model_file`), the base
    model's measurements, one entry per target."""
    optional = [k for k in OPTIONAL if k in base]
    targets = []
    for target in cfg.targets:
        name = partition_name(target)
        if name not in pruned or name not in logs:
            raise KeyError(f"no pruned model {name!r} for FLOPs target {target}: run the whole pruning pipeline")
        m = pruned[name]
        targets.append({"target": target, "flops": m["flops"], "flops_ratio": m["flops"] / base["flops"],
                        "parameters": m["parameters"], "latency_ms": m["latency_ms"],
                        **{k: m[k] for k in optional},
                        "architecture": m["architecture"], "ffn_full": m["ffn_full"],
                        "probe": m["probe"], "retrieval": m["retrieval"],
                        "search_history": logs[name]["search_history"]})
    return {"config": {"targets": list(cfg.targets), "search_steps": cfg.search.steps,
                       "finetune_steps": cfg.finetune.steps, "model_file": model_file},
            "base": {k: base[k] for k in ("flops", "parameters", "latency_ms", "latency_device", *optional,
                                          "probe", "retrieval")},
            "targets": targets}

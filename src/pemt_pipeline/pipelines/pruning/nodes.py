"""Nodes of the `pruning` pipeline (METHOD.md section 6, issue 7).

For every FLOPs target: a GatedModel around a copy of the trained model searches the architecture
with the pretraining objective (its MEP and CPP heads from the training checkpoint) plus the FLOPs
penalty, is fine-tuned with that architecture fixed, and is exported as a plain PrunedModel (one
file per target). Only the Transformers are pruned: the CNN clip encoders stay frozen, so the
training batches are embedded once (`embed_batches`) and every search / fine-tuning step runs the
Transformers alone. The unpruned model and every pruned one are then measured alike: analytic FLOPs
of the Transformers per video, the Transformer parameters the forward pass uses, the latency of the
Transformers (`contextualize`) on a fixed batch, the linear probe per stream and CPP retrieval.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader

from pemt_pipeline.configs import DEVICE, NON_EMPTY, at_least, each, from_params, optional, require
from pemt_pipeline.evaluation.features import VideoFeatures, video_features
from pemt_pipeline.evaluation.probe import ProbeConfig
from pemt_pipeline.evaluation.video import VideoEvalConfig, probe_report, retrieval_report
from pemt_pipeline.features.embed import resolve_device
from pemt_pipeline.models import FactorizedLinear, PEMTModel
from pemt_pipeline.pruning import (
    FinetuneConfig,
    GatedModel,
    PrunedModel,
    SearchConfig,
    export,
    finetune,
    full_architecture,
    search,
    transformer_flops,
)
from pemt_pipeline.pruning.base import plain_sigmas
from pemt_pipeline.training.checkpoint import TrainedModel, load_checkpoint, trained_from_state
from pemt_pipeline.training.data import AugmentConfig, ShardClipDataset, VideoBatchSampler, collate, model_batch
from pemt_pipeline.training.losses import LossConfig, PretrainingObjective

logger = logging.getLogger(__name__)


# --- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyConfig:
    """Timing of the Transformers (`contextualize`) on the first `batch_size` videos."""

    batch_size: int = 8
    warmup: int = 3
    repeats: int = 30
    cuda: bool = True  # also time on the GPU when CUDA is available

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        require("pruning.latency", self, batch_size=at_least(1), warmup=at_least(0), repeats=at_least(1))


@dataclass(frozen=True)
class PruningConfig:
    """`pruning:` in conf/base/parameters_pruning.yml documents each field."""

    checkpoint: str = "data/06_models/checkpoints/last.pt"
    targets: tuple[float, ...] = (0.75, 0.5)
    init_score: float = 0.5
    splits: tuple[str, ...] = ("train",)
    batch_size: int = 8
    batches: int = 16
    seed: int = 0
    device: str = "auto"
    threads: int | None = 1
    search: dict[str, Any] = field(default_factory=dict)
    finetune: FinetuneConfig = FinetuneConfig()
    latency: LatencyConfig = LatencyConfig()

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> PruningConfig:
        params = dict(params)
        search_params = dict(params.pop("search", None) or {})
        if "flops_target" in search_params:
            raise ValueError("set the FLOPs targets with pruning.targets, not pruning.search.flops_target")
        SearchConfig.from_dict(search_params)  # unknown keys fail here, before any work
        finetune_cfg = FinetuneConfig.from_dict(params.pop("finetune", None) or {})
        latency_cfg = from_params(LatencyConfig, params.pop("latency", None) or {}, "pruning.latency")
        return from_params(cls, params, "pruning", search=search_params, finetune=finetune_cfg,
                           latency=latency_cfg)  # type checks, then validate()

    def validate(self) -> None:
        """Ranges; ValueError naming `pruning.<key>`."""
        targets = ((lambda v: len(v) > 0 and len(set(v)) == len(v) and all(0 < t <= 1 for t in v)),
                   "a non-empty list of distinct FLOPs ratios in (0, 1]")
        require("pruning", self, checkpoint=NON_EMPTY, targets=targets,
                init_score=(lambda v: v > 0, "> 0 (the search starts from the full model)"),
                splits=each(NON_EMPTY), batch_size=at_least(1), batches=at_least(1), seed=at_least(0),
                device=DEVICE, threads=optional(at_least(1)))

    def search_config(self, target: float) -> SearchConfig:
        return SearchConfig.from_dict({**self.search, "flops_target": target})


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's CPU threads set to `n` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def partition_name(target: float) -> str:
    """The pruned model's name (its file: data/06_models/pruned/<name>.pt): target_0.5, ..."""
    return f"target_{target:g}"


# --- load and prune ----------------------------------------------------------------------------
def load_source(params: dict[str, Any]) -> tuple[TrainedModel, dict[str, Tensor]]:
    """The trained model with its CPP head, and the state of the pretraining objective (MEP and CPP
    heads), from the training checkpoint `pruning.checkpoint` (weights_only loads)."""
    cfg = PruningConfig.from_dict(params)
    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint {str(path)!r} does not exist: run the training pipeline "
                                "first, or set pruning.checkpoint")
    state = load_checkpoint(path)
    if "objective" not in state:
        raise ValueError(f"{str(path)!r} holds no pretraining objective (MEP and CPP heads), which the search "
                         "trains with: point pruning.checkpoint at a training checkpoint (last.pt), not at an "
                         "exported model file")
    return trained_from_state(state, str(path)), state["objective"]


def _clip_encoders_frozen(model: PEMTModel) -> None:
    """The batches hold clip embeddings already: the model's CNNs become a reshape [N, ...] -> [N, D]
    (`embed_clips` then places the given embeddings as the CNNs' outputs)."""
    model.visual_cnn = nn.Flatten(1)
    model.audio_cnn = nn.Flatten(1)


@torch.no_grad()
def embed_batches(base: TrainedModel, manifest: pd.DataFrame, params: dict[str, Any],
                  augment: dict[str, Any]) -> list[dict[str, Tensor]]:
    """`pruning.batches` training batches of the `pruning.splits` videos, drawn epoch after epoch
    as in training (random batches, augmentation), with the clips replaced by the trained CNNs'
    embeddings (eval mode): the CNNs are not pruned and stay frozen, so search and fine-tuning
    train the Transformers (with projections, token embeddings, objective heads) on these."""
    cfg = PruningConfig.from_dict(params)
    subset = manifest[manifest["split"].isin(cfg.splits)].reset_index(drop=True)
    if len(subset) < cfg.batch_size:
        raise ValueError(f"{len(subset)} videos in splits {list(cfg.splits)}, fewer than pruning.batch_size "
                         f"({cfg.batch_size})")
    device = resolve_device(cfg.device)
    model = base.model.eval().to(device)
    augment_cfg = AugmentConfig.from_dict(augment)
    dataset = ShardClipDataset(subset, augment_cfg, train=True, seed=cfg.seed)
    sampler = VideoBatchSampler(len(dataset), cfg.batch_size, "random", seed=cfg.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    batches: list[dict[str, Tensor]] = []
    epoch = 0
    with torch_threads(cfg.threads):
        while len(batches) < cfg.batches:
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            for batch in loader:
                mask = batch["clip_mask"]
                inputs = model_batch(batch, device, augment_cfg)
                v, a = model.embed_clips(inputs["video"], inputs["audio"], inputs["clip_mask"])
                batches.append({"video": v.float().cpu(), "audio": a.float().cpu(), "clip_mask": mask,
                                "video_index": batch["video_index"]})
                if len(batches) == cfg.batches:
                    break
            epoch += 1
    model.cpu()
    return batches


def prune_one(base: TrainedModel, objective_state: dict[str, Tensor], batches: list[dict[str, Tensor]],
              target: float, loss: LossConfig, cfg: PruningConfig) -> tuple[TrainedModel, dict[str, Any]]:
    """Search, fine-tune and export a copy of `base` for one FLOPs target (base is left as it is).
    Returns the pruned model (base's CNNs) with its fine-tuned CPP head, and the logs."""
    device = resolve_device(cfg.device)
    model = copy.deepcopy(base.model).to(device)
    objective = PretrainingObjective(model, loss)
    objective.load_state_dict(objective_state)
    objective.to(device)
    gated = GatedModel(model, init_score=cfg.init_score)
    _clip_encoders_frozen(gated)
    start = time.perf_counter()
    found = search(gated, batches, objective, cfg.search_config(target))
    searched = time.perf_counter()
    tuned = finetune(gated, batches, objective, cfg.finetune)
    pruned = export(gated)
    pruned.visual_cnn, pruned.audio_cnn = model.visual_cnn, model.audio_cnn  # unchanged: frozen
    pruned = pruned.cpu().eval()
    cpp = copy.deepcopy(objective.cpp).cpu().eval()
    end = time.perf_counter()
    logger.info("pruned to FLOPs target %g: %.3f of the unpruned FLOPs (search %.0f s, fine-tuning %.0f s)",
                target, found["flops"], searched - start, end - searched)
    return TrainedModel(pruned, cpp), {
        "target": target, "flops": found["flops"], "architecture": tuned["architecture"],
        "search_history": found["history"], "finetune_history": tuned["history"],
        "search_seconds": round(searched - start, 2), "finetune_seconds": round(end - searched, 2)}


def prune_models(base: TrainedModel, objective_state: dict[str, Tensor], batches: list[dict[str, Tensor]],
                 params: dict[str, Any], loss: dict[str, Any]) -> tuple[dict[str, TrainedModel], dict[str, Any]]:
    """One pruned model per `pruning.targets` entry (named by `partition_name`), and their logs."""
    cfg = PruningConfig.from_dict(params)
    loss_cfg = LossConfig.from_dict(loss)
    models, logs = {}, {}
    with torch_threads(cfg.threads):
        for target in cfg.targets:
            name = partition_name(target)
            models[name], logs[name] = prune_one(base, objective_state, batches, target, loss_cfg, cfg)
    return models, logs


# --- measure -----------------------------------------------------------------------------------
def transformer_parameters(model: PEMTModel) -> int:
    """Scalars of the Transformers' weights that the forward pass uses, each tensor element once.
    Unpruned: all of them (parameter_counts()["transformers"]). Pruned: the ops' weights (attention:
    q, k, v, o; conv: its kernel and bias, and v's V^T and o's U Sigma in low-rank layers; skip:
    none), the LayerNorms, and of fc1 / fc2 only the rows / columns of kept FFN units (the union
    over the layers that share them)."""
    if not isinstance(model, PrunedModel):
        return model.parameter_counts()["transformers"]
    used: dict[int, Tensor] = {}

    def mark(p: Tensor | None, index: Tensor | None = None, dim: int = 0) -> None:
        if p is None:
            return
        m = used.setdefault(id(p), torch.zeros(p.shape, dtype=torch.bool))
        if index is None:
            m.fill_(True)
        else:
            m.index_fill_(dim, index.cpu(), True)

    def mark_all(module: torch.nn.Module) -> None:
        for p in module.parameters():
            mark(p)

    for stack in model.transformers.values():
        for layer in stack.layers:
            mark_all(layer.norm1)
            mark_all(layer.norm2)
            if layer.mixer is not None:
                mark_all(layer.mixer)
            units, fc1, fc2 = layer.ffn.units, layer.ffn.fc1, layer.ffn.fc2
            if isinstance(fc1, FactorizedLinear):  # rows of U (and bias): V^T, Sigma whole
                mark_all(fc1.v)
                mark_all(fc1.sigma)
                mark(fc1.u.weight, units)
                mark(fc1.u.bias, units)
            else:
                mark(fc1.weight, units)
                mark(fc1.bias, units)
            if isinstance(fc2, FactorizedLinear):  # columns of V^T: Sigma, U whole
                mark(fc2.v.weight, units, 1)
                mark_all(fc2.sigma)
                mark_all(fc2.u)
            else:
                mark(fc2.weight, units, 1)
                mark(fc2.bias)
    return sum(int(m.sum()) for m in used.values())


@torch.inference_mode()
def contextualize_latency(model: PEMTModel, features: VideoFeatures, cfg: LatencyConfig,
                          device: torch.device) -> float:
    """Median milliseconds of `model.contextualize` over the first `cfg.batch_size` videos' clip
    embeddings (the Transformers only), after `cfg.warmup` untimed passes."""
    n = min(cfg.batch_size, len(features.mask))
    v, a, mask = (x[:n].to(device) for x in (features.visual, features.audio, features.mask))
    model = model.eval().to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(cfg.warmup):
        model.contextualize(v, a, mask, mask)
    sync()
    times = []
    for _ in range(cfg.repeats):
        start = time.perf_counter()
        model.contextualize(v, a, mask, mask)
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(trained: TrainedModel, manifest: pd.DataFrame, evaluation: dict[str, Any], augment: dict[str, Any],
            cfg: PruningConfig) -> dict[str, Any]:
    """FLOPs (analytic, per video), Transformer parameters, latency, probe per stream, retrieval."""
    model = trained.model
    eval_cfg = VideoEvalConfig.from_dict(evaluation)
    features = video_features(model, manifest, AugmentConfig.from_dict(augment), eval_cfg.batch_size,
                              eval_cfg.device, eval_cfg.progress)
    probe = probe_report({"model": features}, manifest, eval_cfg, ProbeConfig.from_dict(evaluation.get("probe")))
    retrieval = retrieval_report(trained, features, manifest, eval_cfg)
    pruned = isinstance(model, PrunedModel)
    arch = model.architecture() if pruned else full_architecture(model.cfg)
    # timed as deployed: orthogonal Sigmas as plain matrices (as the exported models hold them), not
    # rebuilt by their parametrisation (a matrix_exp per forward) in the unpruned model
    timed = model if pruned else plain_sigmas(copy.deepcopy(model))
    out = {"flops": transformer_flops(model.cfg, arch, cfg.search_config(1.0).n_clips),
           "parameters": transformer_parameters(model),
           "latency_ms": contextualize_latency(timed, features, cfg.latency, torch.device("cpu")),
           "latency_device": "cpu", "architecture": arch, "ffn_full": model.cfg.transformer.ffn,
           "probe": probe["model"], "retrieval": retrieval}
    if cfg.latency.cuda and torch.cuda.is_available():
        out["latency_ms_cuda"] = contextualize_latency(timed, features, cfg.latency, torch.device("cuda"))
    model.cpu()
    return out


def measure_base(base: TrainedModel, manifest: pd.DataFrame, evaluation: dict[str, Any], augment: dict[str, Any],
                 params: dict[str, Any]) -> dict[str, Any]:
    """The measurements of the unpruned trained model."""
    cfg = PruningConfig.from_dict(params)
    with torch_threads(cfg.threads):
        return measure(base, manifest, evaluation, augment, cfg)


def measure_pruned(pruned: dict[str, Callable[[], TrainedModel]], manifest: pd.DataFrame,
                   evaluation: dict[str, Any], augment: dict[str, Any],
                   params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The same measurements of every pruned model, read back from its file (one at a time)."""
    cfg = PruningConfig.from_dict(params)
    with torch_threads(cfg.threads):
        return {name: measure(load(), manifest, evaluation, augment, cfg) for name, load in sorted(pruned.items())}


def collect_results(base: dict[str, Any], pruned: dict[str, dict[str, Any]], logs: dict[str, dict[str, Any]],
                    params: dict[str, Any]) -> dict[str, Any]:
    """`pruning_results`: the configuration, the base model's measurements, one entry per target."""
    cfg = PruningConfig.from_dict(params)
    optional = [k for k in ("latency_ms_cuda",) if k in base]
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
    return {"config": {"targets": list(cfg.targets), "search_steps": cfg.search_config(1.0).steps,
                       "finetune_steps": cfg.finetune.steps, "model_file": cfg.checkpoint},
            "base": {k: base[k] for k in ("flops", "parameters", "latency_ms", "latency_device", *optional,
                                          "probe", "retrieval")},
            "targets": targets}

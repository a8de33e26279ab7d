"""The pruning run's configuration: `pruning:` of conf/base/parameters_pruning.yml, which documents
each field (the defaults here are the YAML's). Parsed once, at the pipeline's boundary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pemt_pipeline.configs import DEVICE, NON_EMPTY, at_least, each, from_params, optional, require

from .search import FinetuneConfig, SearchConfig


@dataclass(frozen=True)
class LatencyConfig:
    """Timing of the Transformers (`contextualize`) on the first `batch_size` videos with
    torch.utils.benchmark (`measure.contextualize_latency`)."""

    batch_size: int = 8
    warmup: int = 3  # untimed passes first
    repeats: int = 30  # timed passes, the median reported
    cuda: bool = True  # also time on the GPU when CUDA is available

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        require("pruning.latency", self, batch_size=at_least(1), warmup=at_least(0), repeats=at_least(1))


@dataclass(frozen=True)
class PruningConfig:
    """`search.flops_target` is not a setting: each of `targets` is one (`search_config`)."""

    targets: tuple[float, ...] = (0.75, 0.5)
    init_score: float = 0.5
    splits: tuple[str, ...] = ("train",)
    batch_size: int = 8
    batches: int = 16
    seed: int = 0
    device: str = "auto"
    threads: int | None = 1
    search: SearchConfig = SearchConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    latency: LatencyConfig = LatencyConfig()

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> PruningConfig:
        """From `params:pruning`; unknown keys, wrong types and ranges raise a ValueError naming
        `pruning.<key>`, before any work."""
        params = dict(params)
        search_params = dict(params.pop("search", None) or {})
        if "flops_target" in search_params:
            raise ValueError("set the FLOPs targets with pruning.targets, not pruning.search.flops_target")
        search_cfg = SearchConfig.from_dict(search_params)
        finetune_cfg = FinetuneConfig.from_dict(params.pop("finetune", None) or {})
        latency_cfg = from_params(LatencyConfig, params.pop("latency", None) or {}, "pruning.latency")
        return from_params(cls, params, "pruning", search=search_cfg, finetune=finetune_cfg,
                           latency=latency_cfg)  # type checks, then validate()

    def validate(self) -> None:
        """Ranges; ValueError naming `pruning.<key>`."""
        targets = ((lambda v: len(v) > 0 and len(set(v)) == len(v) and all(0 < t <= 1 for t in v)),
                   "a non-empty list of distinct FLOPs ratios in (0, 1]")
        require("pruning", self, targets=targets,
                init_score=(lambda v: v > 0, "> 0 (the search starts from the full model)"),
                splits=each(NON_EMPTY), batch_size=at_least(1), batches=at_least(1), seed=at_least(0),
                device=DEVICE, threads=optional(at_least(1)))

    def search_config(self, target: float) -> SearchConfig:
        """The search settings for one FLOPs target."""
        return dataclasses.replace(self.search, flops_target=target)


def partition_name(target: float) -> str:
    """The pruned model's name (its file: data/06_models/pruned/<name>.pt): target_0.5, ..."""
    return f"target_{target:g}"

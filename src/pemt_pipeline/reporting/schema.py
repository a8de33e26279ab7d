"""Checks that the report's inputs carry every key the report reads (no Kedro).

A missing key or a wrong container raises `ReportInputError`, whose message names the full path of
the key, e.g. ``fusion_results['variants']['mid_lowrank']['runs'][1]: missing required key
'step_seconds'``. Keys the report can do without are optional:

- fusion: a run's ``train_seconds``; ``probe['random_init']`` (the report then says ``n/a``);
  a history row's loss terms (only ``step`` and ``total`` are required); retrieval ``n``/``n_videos``.
- pruning: ``config['model_file']``, ``base['latency_device']`` (default ``cpu``), a search history
  row's extra keys; a model's retrieval may be ``{"skipped": why}`` (no CPP head: shown as n/a).

Metric values may be None or NaN (a failed metric): they are shown as ``n/a`` and left out of
means and of the conclusion's comparisons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pemt_pipeline.evaluation.retrieval import RETRIEVAL_DIRECTIONS
from pemt_pipeline.evaluation.video import SKIPPED
from pemt_pipeline.models.architecture import OPS


class ReportInputError(ValueError):
    """An input of the report lacks a required key or has a wrong shape; the message names it."""


def _path(root: str, keys: Sequence[Any]) -> str:
    return root + "".join(f"[{k!r}]" for k in keys)


def _need_mapping(value: Any, root: str, keys: Sequence[Any]) -> Mapping:
    if not isinstance(value, Mapping):
        raise ReportInputError(f"{_path(root, keys)}: expected a dict, got {type(value).__name__}")
    return value


def _need_list(value: Any, root: str, keys: Sequence[Any], non_empty: bool = False) -> Sequence:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ReportInputError(f"{_path(root, keys)}: expected a list, got {type(value).__name__}")
    if non_empty and not value:
        raise ReportInputError(f"{_path(root, keys)}: is empty, at least one entry is required")
    return value


def _require(obj: Any, required: Sequence[str], root: str, keys: Sequence[Any]) -> Mapping:
    obj = _need_mapping(obj, root, keys)
    for key in required:
        if key not in obj:
            raise ReportInputError(f"{_path(root, keys)}: missing required key {key!r}")
    return obj


def _check_probe(probe: Any, root: str, keys: list[Any]) -> None:
    probe = _need_mapping(probe, root, keys)
    if not probe:
        raise ReportInputError(f"{_path(root, keys)}: no probed stream")
    for stream, metrics in probe.items():
        _require(metrics, ("top1", "chance_top1"), root, keys + [stream])


def _check_retrieval(retrieval: Any, root: str, keys: list[Any]) -> None:
    if isinstance(retrieval, Mapping) and SKIPPED in retrieval:  # a model without a CPP head
        return
    retrieval = _require(retrieval, RETRIEVAL_DIRECTIONS + ("cpp_balanced_accuracy",), root, keys)
    for direction in RETRIEVAL_DIRECTIONS:
        _require(retrieval[direction], ("recall@1", "recall@5", "recall@10", "chance_recall@1",
                                        "chance_recall@5", "chance_recall@10", "median_rank",
                                        "chance_median_rank"), root, keys + [direction])


def validate_fusion(fusion: Any, root: str = "fusion_results") -> None:
    """Raise ReportInputError naming the first missing required key of `fusion`."""
    fusion = _require(fusion, ("config", "variants"), root, [])
    config = _require(fusion["config"], ("steps", "seeds", "batch_size", "data"), root, ["config"])
    _need_list(config["seeds"], root, ["config", "seeds"])
    _require(config["data"], ("n_train_videos", "n_test_videos", "n_classes"), root,
             ["config", "data"])
    variants = _need_mapping(fusion["variants"], root, ["variants"])
    if not variants:
        raise ReportInputError(f"{_path(root, ['variants'])}: is empty, at least one variant is "
                               "required")
    for name, variant in variants.items():
        at = ["variants", name]
        variant = _require(variant, ("model", "parameters", "runs"), root, at)
        _require(variant["model"], ("fusion", "share_layers", "share_transformers", "rank"), root,
                 at + ["model"])
        _require(variant["parameters"], ("visual_cnn", "audio_cnn", "projections", "embeddings",
                                         "transformers_shared", "transformers", "total"), root,
                 at + ["parameters"])
        runs = _need_list(variant["runs"], root, at + ["runs"], non_empty=True)
        for i, run in enumerate(runs):
            r_at = at + ["runs", i]
            run = _require(run, ("seed", "history", "step_seconds", "clips_per_second",
                                 "peak_memory_mb", "probe", "retrieval"), root, r_at)
            for j, row in enumerate(_need_list(run["history"], root, r_at + ["history"])):
                _require(row, ("step", "total"), root, r_at + ["history", j])
            probe = _require(run["probe"], ("pretrained",), root, r_at + ["probe"])
            for init, streams in probe.items():
                _check_probe(streams, root, r_at + ["probe", init])
            _check_retrieval(run["retrieval"], root, r_at + ["retrieval"])


def validate_pruning(pruning: Any, root: str = "pruning_results") -> None:
    """Raise ReportInputError naming the first missing required key of `pruning`."""
    pruning = _require(pruning, ("config", "base", "targets"), root, [])
    config = _require(pruning["config"], ("targets", "search_steps", "finetune_steps"), root,
                      ["config"])
    _need_list(config["targets"], root, ["config", "targets"])
    base = _require(pruning["base"], ("flops", "parameters", "latency_ms", "probe", "retrieval"),
                    root, ["base"])
    _check_probe(base["probe"], root, ["base", "probe"])
    _check_retrieval(base["retrieval"], root, ["base", "retrieval"])
    targets = _need_list(pruning["targets"], root, ["targets"])
    for i, target in enumerate(targets):
        at = ["targets", i]
        target = _require(target, ("target", "flops", "flops_ratio", "parameters", "latency_ms",
                                   "architecture", "ffn_full", "probe", "retrieval",
                                   "search_history"), root, at)
        arch = _need_mapping(target["architecture"], root, at + ["architecture"])
        for stream, depths in arch.items():
            for d, entry in enumerate(_need_list(depths, root, at + ["architecture", stream])):
                entry = _require(entry, ("op", "ffn_units"), root, at + ["architecture", stream, d])
                if entry["op"] not in OPS:
                    raise ReportInputError(
                        f"{_path(root, at + ['architecture', stream, d, 'op'])}: unknown op "
                        f"{entry['op']!r}, expected one of {OPS}")
        _check_probe(target["probe"], root, at + ["probe"])
        _check_retrieval(target["retrieval"], root, at + ["retrieval"])
        for j, row in enumerate(_need_list(target["search_history"], root,
                                           at + ["search_history"])):
            _require(row, ("step", "flops"), root, at + ["search_history", j])


FINETUNE_INITS = ("pretrained", "random_init")


def validate_finetune(finetune: Any, root: str = "finetune_results") -> None:
    """Raise ReportInputError naming the first missing required key of `finetune` (per protocol:
    the video / visual_cnn results of `pemt_pipeline.finetuning`, or audio_linear_kfold's)."""
    for protocol, results in _need_mapping(finetune, root, []).items():
        if protocol == "audio_linear_kfold":
            models = _require(results, ("folds", "models"), root, [protocol])["models"]
            for init, streams in _require(models, ("pretrained",), root, [protocol, "models"]).items():
                for stream, levels in _need_mapping(streams, root, [protocol, "models", init]).items():
                    for level in ("clip", "file"):
                        _require(_require(levels, (level,), root, [protocol, "models", init, stream])[level],
                                 ("top1", "top1_std"), root, [protocol, "models", init, stream, level])
            continue
        results = _require(results, ("protocol", "model_source", "pretrained", "test_crops"), root, [protocol])
        for init in FINETUNE_INITS:
            if init in results:
                run = _require(results[init], ("model_source", "clip", "video", "training"), root, [protocol, init])
                for level in ("clip", "video"):
                    _require(run[level], ("top1", "top_k", "n"), root, [protocol, init, level])
                _require(run["training"], ("history",), root, [protocol, init, "training"])

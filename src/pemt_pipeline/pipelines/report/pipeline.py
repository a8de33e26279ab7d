"""Wiring of the `report` pipeline: one Kedro namespace per variant of `report.variants`
(variant -> train -> evaluate), then one collect node and the rendering.

The variant names (the namespaces) come from the run's parameters, as Kedro loads them (`--env`,
`--params`): `pemt_pipeline.pipeline_registry` passes them in.
"""

from __future__ import annotations

from collections.abc import Iterable

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.report.nodes import (collect_results, evaluate_variant, render, train_variant,
                                                  variant_params)

SHARED = {"manifest", "clip_shards", "clip_embeddings", "negatives_table"}


def variant_results(name: str) -> str:
    """The dataset of a variant's results (catalog pattern `variant_results_{variant}`)."""
    return f"variant_results_{name}"


def variant_settings_of(name: str):
    """variant_params for this variant (a named function: Kedro reads its type hints)."""
    def variant_settings(model: dict, training: dict, report: dict, variant: dict) -> dict:
        return variant_params(model, training, report, variant, name)
    return variant_settings


def variant_pipeline(name: str) -> Pipeline:
    nodes = [
        Node(variant_settings_of(name),
             inputs=["params:model", "params:training", "params:report", f"params:report.variants.{name}"],
             outputs="settings", name="variant_settings"),
        Node(train_variant, inputs=["manifest", "clip_shards", "clip_embeddings", "negatives_table", "settings",
                                    "params:negatives", "params:embedding"],
             outputs="runs", name="train_variant"),
        Node(evaluate_variant, inputs=["runs", "manifest", "settings", "params:evaluation", "params:training.augment"],
             outputs="results", name="evaluate_variant"),
    ]
    return Pipeline(nodes, namespace=name, inputs=SHARED, outputs={"results": variant_results(name)},
                    parameters={"params:model", "params:training", "params:report", "params:evaluation",
                                "params:training.augment", "params:negatives", "params:embedding",
                                f"params:report.variants.{name}"})


def create_pipeline(variants: Iterable[str] = (), **kwargs) -> Pipeline:
    """The report over the named variants (`report.variants` of the run's parameters)."""
    names = list(variants)
    collect = Node(collect_results,
                   inputs={"manifest": "manifest", "report": "params:report", "training": "params:training",
                           "evaluation": "params:evaluation", **{n: variant_results(n) for n in names}},
                   outputs="fusion_results", name="collect_fusion_results")
    return Pipeline([*(variant_pipeline(n) for n in names), collect, render_pipeline()])


def render_pipeline(tags: tuple[str, ...] = ()) -> Pipeline:
    """Rendering alone: the fusion comparison with the pruning and fine-tuning sections when each
    exists (the pruning and finetune pipelines end with it too, so their sections appear right after
    they run; `tags`: those of the pipeline it ends, so that `--tags` keeps it)."""
    return Pipeline([Node(render, inputs=["fusion_results", "pruning_results", "finetune_results"], outputs="report",
                          name="render_report", tags=list(tags))])

"""Wiring of the `report` pipeline: one Kedro namespace per variant of `report.variants`
(variant -> train -> evaluate), then one collect node and the rendering.

The variant names (the namespaces) are read from conf/base/parameters_report.yml of the project
being run (the working directory) when the pipelines are registered; their settings (and everything
else) from the run's parameters.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from kedro.pipeline import Node, Pipeline
from omegaconf import OmegaConf

from pemt_pipeline.pipelines.report.nodes import (collect_results, evaluate_variant, render, train_variant,
                                                  variant_params)

PARAMETERS = Path("conf") / "base" / "parameters_report.yml"
SHARED = {"manifest", "clip_embeddings", "negatives_table"}


def variant_names(path: Path = PARAMETERS) -> list[str]:
    if not path.is_file():  # not run from a project folder (e.g. imported elsewhere): no variants
        return []
    return list(OmegaConf.load(path)["report"]["variants"])


def variant_pipeline(name: str) -> Pipeline:
    nodes = [
        Node(partial(variant_params, name=name),
             inputs=["params:model", "params:training", "params:report", f"params:report.variants.{name}"],
             outputs="settings", name="variant_settings"),
        Node(train_variant, inputs=["manifest", "clip_embeddings", "negatives_table", "settings"],
             outputs="runs", name="train_variant"),
        Node(evaluate_variant, inputs=["runs", "manifest", "settings", "params:evaluation", "params:training.augment"],
             outputs="results", name="evaluate_variant"),
    ]
    return Pipeline(nodes, namespace=name, inputs=SHARED,
                    parameters={"params:model", "params:training", "params:report", "params:evaluation",
                                "params:training.augment", f"params:report.variants.{name}"})


def create_pipeline(**kwargs) -> Pipeline:
    names = variant_names()
    collect = Node(collect_results,
                   inputs={"manifest": "manifest", "report": "params:report", "training": "params:training",
                           "evaluation": "params:evaluation", **{n: f"{n}.results" for n in names}},
                   outputs="fusion_results", name="collect_fusion_results")
    return Pipeline([*(variant_pipeline(n) for n in names), collect, render_pipeline()])


def render_pipeline() -> Pipeline:
    """Rendering alone (the pruning pipeline reuses it to add its section)."""
    return Pipeline([Node(render, inputs=["fusion_results", "pruning_results"], outputs="report",
                          name="render_report")])

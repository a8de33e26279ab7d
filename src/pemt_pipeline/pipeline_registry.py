"""Project pipelines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.pipeline import Pipeline

from pemt_pipeline.pipelines import demo_data, embedding, evaluation, ingestion, negatives, pruning, report, training
from pemt_pipeline.pipelines import features
from pemt_pipeline.pipelines import import_checkpoint
from pemt_pipeline.finetuning.config import ALL_PROTOCOLS
from pemt_pipeline.pipelines import finetune, predict
from pemt_pipeline.project_config import project_parameters

# the pipelines `kedro run` (the default) chains, in order
DEFAULT_CHAIN = ("demo_data", "ingestion", "embedding", "negatives", "training", "evaluation")

_run_parameters: dict[str, Any] | None = None  # set by hooks.RunParameters, used by the next registration


def use_run_parameters(parameters: dict[str, Any]) -> None:
    """The parameters of the session about to run (its `--env` and `--params` applied): the next
    `register_pipelines` builds the pipelines for them (once; a later one reads the project's conf)."""
    global _run_parameters
    _run_parameters = parameters


def report_variants(params: dict[str, Any] | None = None) -> list[str]:
    """The names of `report.variants` of `params`, or (None: pipelines listed outside a run, e.g. by
    kedro-viz) of the project's configuration."""
    if params is None:
        conf = Path.cwd() / "conf"
        if not conf.is_dir():  # e.g. a notebook in notebooks/: the checkout this package runs from
            conf = Path(__file__).resolve().parents[2] / "conf"
        params = project_parameters(conf) if conf.is_dir() else {}
    return list((params.get("report") or {}).get("variants") or {})


def register_pipelines() -> dict[str, Pipeline]:
    """`kedro run` (the default) runs the chain on the embedded demo data, up to the video evaluation;
    `--pipelines ingestion` ingests `ingestion.source_dir` (a runtime parameter; the demo folder by
    default), and the later pipelines work on whatever was ingested last. `report` trains and
    compares the fusion/sharing grid; `pruning` prunes the trained model and renders the report
    (its section alone until the report pipeline has run, then joined to the fusion comparison)."""
    global _run_parameters
    run_parameters, _run_parameters = _run_parameters, None
    pipelines = {
        "demo_data": demo_data.create_pipeline(),
        "ingestion": ingestion.create_pipeline(),
        "embedding": embedding.create_pipeline(),
        "negatives": negatives.create_pipeline(),
        "training": training.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
        "pruning": pruning.create_pipeline() + report.render_pipeline(),
        "report": report.create_pipeline(report_variants(run_parameters)),
        "features": features.create_pipeline(),
        "import_checkpoint": import_checkpoint.create_pipeline(),
        "finetune": finetune.create_pipeline() + report.render_pipeline(tags=ALL_PROTOCOLS),
        "predict": predict.create_pipeline(),
    }
    on_demo = Pipeline(pipelines["ingestion"], inputs={"source_videos": "demo_videos"})
    video_evaluation = pipelines["evaluation"].only_nodes_with_tags("video")  # no audio downstream folder needed
    chain = {**pipelines, "ingestion": on_demo, "evaluation": video_evaluation}
    pipelines["__default__"] = sum((chain[name] for name in DEFAULT_CHAIN), Pipeline([]))
    return pipelines

"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from pemt_pipeline.pipelines import demo_data, embedding, ingestion, negatives, training


def register_pipelines() -> dict[str, Pipeline]:
    """`kedro run` (the default) runs the chain on the embedded demo data; `--pipelines ingestion`
    ingests `ingestion.source_dir` (a runtime parameter; the demo folder by default), and the later
    pipelines work on whatever was ingested last."""
    pipelines = {
        "demo_data": demo_data.create_pipeline(),
        "ingestion": ingestion.create_pipeline(),
        "embedding": embedding.create_pipeline(),
        "negatives": negatives.create_pipeline(),
        "training": training.create_pipeline(),
    }
    on_demo = Pipeline(pipelines["ingestion"], inputs={"source_videos": "demo_videos"})
    pipelines["__default__"] = pipelines["demo_data"] + on_demo + pipelines["embedding"] + pipelines["negatives"] + pipelines["training"]
    return pipelines

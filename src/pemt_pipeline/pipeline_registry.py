"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from pemt_pipeline.pipelines import demo_data, ingestion


def register_pipelines() -> dict[str, Pipeline]:
    """`kedro run` (the default) runs the chain on the embedded demo data; `--pipelines ingestion`
    ingests `ingestion.source_dir` (a runtime parameter; the demo folder by default)."""
    demo = demo_data.create_pipeline()
    ingest = ingestion.create_pipeline()
    on_demo = Pipeline(ingest, inputs={"source_videos": "demo_videos"})
    return {"demo_data": demo, "ingestion": ingest, "__default__": demo + on_demo}

"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from pemt_pipeline.pipelines import demo_data, embedding, evaluation, ingestion, negatives, pruning, report, training


def register_pipelines() -> dict[str, Pipeline]:
    """`kedro run` (the default) runs the chain on the embedded demo data, up to the video evaluation;
    `--pipelines ingestion` ingests `ingestion.source_dir` (a runtime parameter; the demo folder by
    default), and the later pipelines work on whatever was ingested last. `report` trains and
    compares the fusion/sharing grid; `pruning` prunes the trained model and adds its section."""
    pipelines = {
        "demo_data": demo_data.create_pipeline(),
        "ingestion": ingestion.create_pipeline(),
        "embedding": embedding.create_pipeline(),
        "negatives": negatives.create_pipeline(),
        "training": training.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
        # pruning also re-renders the report with its section (dvc's stage stops at pruning_results)
        "pruning": pruning.create_pipeline() + report.render_pipeline(),
        "report": report.create_pipeline(),
    }
    on_demo = Pipeline(pipelines["ingestion"], inputs={"source_videos": "demo_videos"})
    video_evaluation = pipelines["evaluation"].only_nodes_with_tags("video")  # no audio downstream folder needed
    pipelines["__default__"] = (pipelines["demo_data"] + on_demo + pipelines["embedding"] + pipelines["negatives"]
                                + pipelines["training"] + video_evaluation)
    return pipelines

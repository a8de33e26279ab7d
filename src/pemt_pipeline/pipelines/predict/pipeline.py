"""Wiring of the `predict` pipeline."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.predict.nodes import ingest_folder, predict


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(ingest_folder, inputs=["predict_videos", "params:ingestion", "params:predict"],
                 outputs=["predict_shards", "predict_manifest", "predict_rejects"], name="ingest_predict_videos"),
            Node(predict, inputs=["predict_model", "predict_manifest", "predict_shards", "params:predict",
                                  "params:training.augment"],
                 outputs="predictions", name="predict_top_k"),
        ]
    )

"""Wiring of the `features` pipeline."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.features.nodes import export_model_features


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                export_model_features,
                inputs=["pretrained_model", "manifest", "clip_shards", "params:features", "params:training.augment",
                        "params:ingestion"],
                outputs=["exported_features", "features_summary"],
                name="export_features",
            )
        ]
    )

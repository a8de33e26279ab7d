"""Wiring of the `import_checkpoint` pipeline."""

from kedro.pipeline import Node, Pipeline

from pemt_pipeline.pipelines.import_checkpoint.nodes import import_authors_checkpoint


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(import_authors_checkpoint, inputs=["authors_checkpoint", "params:import", "params:model"],
                 outputs=["imported_model", "import_report"], name="import_authors_checkpoint"),
        ]
    )

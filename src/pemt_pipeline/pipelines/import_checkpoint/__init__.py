"""The `import_checkpoint` pipeline: the authors' released checkpoint -> a model file of this project."""

from pemt_pipeline.pipelines.import_checkpoint.pipeline import create_pipeline

__all__ = ["create_pipeline"]

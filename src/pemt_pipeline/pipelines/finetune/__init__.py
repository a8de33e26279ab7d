"""`finetune`: the paper's fine-tuning protocols on a model file, beside the random-init baseline."""

from pemt_pipeline.pipelines.finetune.pipeline import create_pipeline

__all__ = ["create_pipeline"]

"""`predict`: a fine-tuned model on a folder of videos -> the top-k classes per video, and the
rejected files with their reasons."""

from pemt_pipeline.pipelines.predict.pipeline import create_pipeline

__all__ = ["create_pipeline"]

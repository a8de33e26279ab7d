"""The `evaluation` pipeline: linear probe, audio-visual retrieval and the audio downstream task."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]

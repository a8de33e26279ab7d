"""pemt_pipeline: parameter-efficient multimodal Transformers for audio-visual video
representation learning, as Kedro pipelines over plain PyTorch/PyAV libraries."""

__version__ = "0.1.0"

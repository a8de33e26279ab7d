"""`pruning`: prune the trained model's Transformers to FLOPs targets (attention -> temporal
convolution, FFN units; pemt_pipeline.pruning) and measure base and pruned models alike."""

from pemt_pipeline.pipelines.pruning.pipeline import create_pipeline

__all__ = ["create_pipeline"]

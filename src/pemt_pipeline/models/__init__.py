"""Model library (no Kedro): clip CNNs, shared low-rank Transformers, early/mid/late fusion."""

from .cnn import ResNet, audio_resnet, visual_resnet
from .config import (
    AudioCNNConfig,
    ModelConfig,
    TransformerConfig,
    VisualCNNConfig,
    load_model_config,
)
from .factorized import FactorizedLinear, factorized_group
from .fusion import ModelOutput, PEMTModel, StreamOutput
from .transformer import Transformer, TransformerLayer, build_transformers

__all__ = [
    "AudioCNNConfig", "FactorizedLinear", "ModelConfig", "ModelOutput", "PEMTModel", "ResNet",
    "StreamOutput", "Transformer", "TransformerConfig", "TransformerLayer", "VisualCNNConfig",
    "audio_resnet", "build_transformers", "factorized_group", "load_model_config",
    "visual_resnet",
]

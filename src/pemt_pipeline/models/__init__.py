"""Model library (no Kedro): clip CNNs, shared low-rank Transformers, early/mid/late fusion, the
pruned model, the CPP head, and the model files that hold them."""

from .architecture import (KERNEL, OPS, Architecture, full_architecture, stream_lengths,
                           validate_architecture)
from .classifiers import ClassifierConfig, VideoClassifier, VisualCNNClassifier, build_classifier
from .cnn import ResNet, audio_resnet, visual_resnet
from .config import (
    AudioCNNConfig,
    ModelConfig,
    TransformerConfig,
    VisualCNNConfig,
)
from .factorized import FactorizedLinear, factorized_group
from .files import (
    PRUNED_FORMAT,
    TrainedModel,
    load_model,
    load_state,
    load_trained,
    model_from_state,
    random_model,
    save_state,
    save_trained,
    trained_from_state,
)
from .finetuned import FINETUNED_FORMAT, FinetunedModel, load_finetuned, save_finetuned
from .fusion import ModelOutput, PEMTModel, StreamOutput
from .heads import CPPHead, cpp_summary
from .pruned import PrunedConfig, PrunedModel
from .streams import plain_sigmas
from .transformer import Transformer, TransformerLayer, build_transformers

__all__ = [
    "FINETUNED_FORMAT", "ClassifierConfig", "FinetunedModel", "VideoClassifier", "VisualCNNClassifier",
    "build_classifier", "load_finetuned", "save_finetuned",
    "KERNEL", "OPS", "PRUNED_FORMAT", "Architecture", "AudioCNNConfig", "CPPHead", "FactorizedLinear",
    "ModelConfig", "ModelOutput", "PEMTModel", "PrunedConfig", "PrunedModel", "ResNet", "StreamOutput",
    "TrainedModel", "Transformer", "TransformerConfig", "TransformerLayer", "VisualCNNConfig", "audio_resnet",
    "build_transformers", "cpp_summary", "factorized_group", "full_architecture", "load_model", "load_state",
    "load_trained", "model_from_state", "plain_sigmas", "random_model", "save_state", "save_trained", "stream_lengths",
    "trained_from_state", "validate_architecture", "visual_resnet",
]

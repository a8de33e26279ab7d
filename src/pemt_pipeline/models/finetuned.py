"""Fine-tuned model files: the fine-tuned model, its classification head and its classes.

A fine-tuned model file (format "pemt-finetuned/1", weights_only like every model file here) holds
``model`` and ``model_config`` (so `load_trained` / `load_model` read it as a plain model: evaluation,
features and pruning accept it), ``classifier`` (the head's state dict), ``classifier_config``
(`ClassifierConfig.to_dict()`), ``protocol`` (the fine-tuning protocol), ``classes`` (class names in
the order of the head's outputs), ``source`` (the model it started from: a model file path or
"random init") and ``step`` = -1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from .classifiers import ClassifierConfig, build_classifier
from .files import load_state, model_from_state, save_state
from .fusion import PEMTModel

FINETUNED_FORMAT = "pemt-finetuned/1"


@dataclass
class FinetunedModel:
    """A fine-tuned model and its head (both in eval mode once loaded)."""

    model: PEMTModel
    classifier: nn.Module  # models.classifiers.VideoClassifier | VisualCNNClassifier
    protocol: str
    classes: list[str]
    source: str = "random init"

    @property
    def classifier_config(self) -> ClassifierConfig:
        return self.classifier.cfg


def finetuned_state(finetuned: FinetunedModel) -> dict[str, Any]:
    """The file's contents (`save_finetuned`)."""
    return {"format": FINETUNED_FORMAT, "model": finetuned.model.state_dict(),
            "model_config": finetuned.model.cfg.to_dict(), "classifier": finetuned.classifier.state_dict(),
            "classifier_config": finetuned.classifier_config.to_dict(), "protocol": finetuned.protocol,
            "classes": [str(c) for c in finetuned.classes], "source": finetuned.source, "step": -1}


def finetuned_from_state(state: Any, source: str) -> FinetunedModel:
    """The FinetunedModel (eval mode) of a loaded file; a ValueError naming `source` for a file of
    another format or whose head does not match its classes."""
    if not isinstance(state, dict) or state.get("format") != FINETUNED_FORMAT:
        got = state.get("format", "a model file without a format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{source!r} is not a fine-tuned model file (format {FINETUNED_FORMAT!r}, got {got!r}): "
                         "make one with `kedro run --pipelines finetune`")
    model = model_from_state(state, None, source)
    cfg = ClassifierConfig.from_dict(state["classifier_config"])
    if cfg.n_classes != len(state["classes"]):
        raise ValueError(f"{source!r}: its head has {cfg.n_classes} outputs but {len(state['classes'])} classes")
    classifier = build_classifier(cfg)
    try:
        classifier.load_state_dict(state["classifier"])
    except RuntimeError as exc:
        raise ValueError(f"{source!r}: the classifier does not match its configuration: {exc}") from None
    return FinetunedModel(model, classifier.eval(), state["protocol"], list(state["classes"]),
                          state.get("source", "unknown"))


def save_finetuned(finetuned: FinetunedModel, path: str | os.PathLike) -> Path:
    """Write atomically (`save_state`)."""
    return save_state(path, finetuned_state(finetuned))


def load_finetuned(path: str | os.PathLike) -> FinetunedModel:
    """A fine-tuned model file -> FinetunedModel in eval mode (weights_only)."""
    return finetuned_from_state(load_state(path, "fine-tuned model file"), str(path))

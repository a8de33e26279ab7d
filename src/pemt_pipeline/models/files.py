"""Model files: saved atomically, loaded with ``weights_only=True`` (tensors and plain Python values
only, so loading one runs no code).

Every file the pipelines write holds ``model`` (a state dict) and ``model_config``; they differ in
what comes with it:
- a model file (`save_trained`): ``cpp_head`` (optional), ``step`` = -1;
- a pruned model file (`save_trained` of a `PrunedModel`): also ``format`` = "pemt-pruned/1" and
  ``architecture``;
- a training checkpoint (`pemt_pipeline.training.checkpoint`): ``step``, ``objective`` (the MEP and
  CPP heads), the optimiser, scheduler, sampler and random states.
Any of them loads as a `TrainedModel` (`load_trained`: the model and its CPP head) or as the bare
model (`load_model`); a bare state dict loads into a given configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pemt_pipeline.atomic import atomic_open

from .config import ModelConfig
from .fusion import PEMTModel
from .heads import CPPHead
from .pruned import PrunedConfig, PrunedModel

PRUNED_FORMAT = "pemt-pruned/1"


@dataclass
class TrainedModel:
    """A pretrained model and its Correct Pair Prediction head (None when the file holds none)."""

    model: PEMTModel
    cpp_head: CPPHead | None = None


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """torch.save through `pemt_pipeline.atomic` (temporary file, fsync, rename): a kill at any
    moment leaves the previous file."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    return path


def load_state(path: str | os.PathLike, what: str = "model file") -> Any:
    """torch.load(weights_only=True) on the CPU; FileNotFoundError / ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad file
        raise ValueError(f"{str(path)!r} is not a readable {what}: {exc}") from None


def random_model(cfg: ModelConfig, seed: int = 0) -> PEMTModel:
    """A freshly initialised model (eval mode), the same for the same seed."""
    torch.manual_seed(seed)
    return PEMTModel(cfg).eval()


def model_from_state(state: Any, model_cfg: ModelConfig | None, source: str) -> PEMTModel:
    """The model (eval mode) of a loaded file: its own configuration wins over `model_cfg` (needed
    only for a bare state dict); a pruned model file gives its PrunedModel. `source` names it in errors."""
    if isinstance(state, dict) and state.get("format") == PRUNED_FORMAT:
        model: PEMTModel = PrunedModel(PrunedConfig.from_dict({"model": state["model_config"],
                                                               "architecture": state["architecture"]}))
        state = state["model"]
    else:
        if isinstance(state, dict) and "model" in state:
            if "model_config" in state:
                model_cfg = ModelConfig.from_dict(state["model_config"])
            state = state["model"]
        if model_cfg is None:
            raise ValueError(f"{source!r} holds no model configuration: give one to load its state dict")
        model = PEMTModel(model_cfg)
    try:
        model.load_state_dict(state)
    except (RuntimeError, AttributeError, TypeError) as exc:
        raise ValueError(f"{source!r} does not match the model configuration: {exc}") from None
    return model.eval()


def load_model(path: str | os.PathLike, model_cfg: ModelConfig | None = None) -> PEMTModel:
    """The model of any model file or training checkpoint (`model_cfg` for a bare state dict)."""
    return model_from_state(load_state(path), model_cfg, str(path))


def trained_from_state(state: dict[str, Any], source: str) -> TrainedModel:
    """The TrainedModel (eval mode) of a loaded model file or training checkpoint: the model, and the
    CPP head of the file ("cpp_head") or of the checkpoint's objective."""
    model = model_from_state(state, None, source)
    head = state.get("cpp_head")
    if head is None and "objective" in state:  # a training checkpoint
        head = {k[len("cpp."):]: v for k, v in state["objective"].items() if k.startswith("cpp.")}
    cpp = None
    if head:
        cpp = CPPHead(2 * model.cfg.transformer.hidden)
        cpp.load_state_dict(head)
        cpp.eval()
    return TrainedModel(model, cpp)


def load_trained(path: str | os.PathLike) -> TrainedModel:
    """A model file, pruned model file or training checkpoint -> TrainedModel in eval mode."""
    state = load_state(path)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{str(path)!r} is not a model file (no 'model' entry)")
    return trained_from_state(state, str(path))


def save_trained(trained: TrainedModel, path: str | os.PathLike) -> Path:
    """Write the model (and its CPP head) as a model file; a PrunedModel as a pruned model file."""
    model = trained.model
    state: dict[str, Any] = {"model": model.state_dict(), "model_config": model.cfg.to_dict(), "step": -1}
    if isinstance(model, PrunedModel):
        state.update(format=PRUNED_FORMAT, architecture=model.architecture())
    if trained.cpp_head is not None:
        state["cpp_head"] = trained.cpp_head.state_dict()
    return save_state(path, state)

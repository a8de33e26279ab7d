"""A trained `PEMTModel` (with its CPP head) as a Kedro dataset (a weights-only torch file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from pemt_pipeline.pruning import PrunedModel, save_pruned
from pemt_pipeline.training.checkpoint import TrainedModel, export_model, load_trained


class PEMTModelDataset(AbstractDataset[TrainedModel, TrainedModel]):
    """Saves {"model": state dict, "model_config": dict, "cpp_head": state dict} atomically (a pruned
    model with `pemt_pipeline.pruning.save_pruned`, format pemt-pruned/1, its architecture too);
    loads either with ``torch.load(weights_only=True)`` into a `TrainedModel` (model in eval mode).

    Args:
        filepath: the .pt file.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> TrainedModel:
        if not self._filepath.is_file():
            raise DatasetError(f"model file {str(self._filepath)!r} does not exist: run the training pipeline first")
        return load_trained(self._filepath)

    def save(self, data: TrainedModel) -> None:
        if isinstance(data.model, PrunedModel):
            save_pruned(data.model, self._filepath, data.cpp_head)
        else:
            export_model(data, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

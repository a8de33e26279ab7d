"""A trained `PEMTModel` as a Kedro dataset (a weights-only torch file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from pemt_pipeline.features.embed import load_model
from pemt_pipeline.models import ModelConfig, PEMTModel
from pemt_pipeline.training.checkpoint import export_model


class PEMTModelDataset(AbstractDataset[PEMTModel, PEMTModel]):
    """Saves {"model": state dict, "model_config": dict} atomically; loads it with
    ``torch.load(weights_only=True)`` into a `PEMTModel` in eval mode.

    Args:
        filepath: the .pt file.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> PEMTModel:
        if not self._filepath.is_file():
            raise DatasetError(f"model file {str(self._filepath)!r} does not exist: run the training pipeline first")
        return load_model(ModelConfig(), str(self._filepath))

    def save(self, data: PEMTModel) -> None:
        export_model(data, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

"""Fine-tuned model files as a Kedro dataset (format pemt-finetuned/1, `pemt_pipeline.models.finetuned`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from pemt_pipeline.models import FinetunedModel, load_finetuned, save_finetuned


class FinetunedModelDataset(AbstractDataset[FinetunedModel, FinetunedModel]):
    """A fine-tuned model file: loads a `FinetunedModel` (eval mode, ``torch.load(weights_only=True)``),
    saves one atomically. The same file also loads as a plain model (`PEMTModelDataset`).

    Args:
        filepath: the .pt file.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> FinetunedModel:
        if not self._filepath.is_file():
            raise DatasetError(f"{str(self._filepath)!r} does not exist: run `kedro run --pipelines finetune` first")
        return load_finetuned(self._filepath)

    def save(self, data: FinetunedModel) -> None:
        save_finetuned(data, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

"""Fine-tuned model files as a Kedro dataset (format pemt-finetuned/1, `pemt_pipeline.models.finetuned`)."""

from __future__ import annotations

from pemt_pipeline.datasets.model_file import ModelFileDataset
from pemt_pipeline.models import FinetunedModel, load_finetuned, save_finetuned


class FinetunedModelDataset(ModelFileDataset):
    """A fine-tuned model file: loads a `FinetunedModel` (eval mode, ``torch.load(weights_only=True)``),
    saves one atomically. The same file also loads as a plain model (`PEMTModelDataset`).

    Args:
        filepath: the .pt file (local or an fsspec URL).
        credentials: storage options of a URL.
    """

    PRODUCER = "finetune"

    def load(self) -> FinetunedModel:
        return load_finetuned(self._existing())

    def save(self, data: FinetunedModel) -> None:
        self._write(save_finetuned, data)

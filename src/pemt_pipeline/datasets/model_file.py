"""Model files and the training checkpoint as Kedro datasets (weights-only torch files)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

import yaml

from pemt_pipeline.models import TrainedModel, load_state, load_trained, save_trained
from pemt_pipeline.models.authors import AuthorsCheckpoint, parse_checkpoint
from pemt_pipeline.training.checkpoint import load_checkpoint


class ModelFileDataset(AbstractDataset):
    """One local torch file (`filepath`) that a pipeline writes: `PRODUCER` names it in the error a
    load of a missing file raises."""

    PRODUCER = "training"

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _existing(self) -> Path:
        """The file; a DatasetError naming the pipeline to run when it does not exist."""
        if not self._filepath.is_file():
            raise DatasetError(f"{str(self._filepath)!r} does not exist: run `kedro run --pipelines {self.PRODUCER}` "
                               "first")
        return self._filepath

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class PEMTModelDataset(ModelFileDataset):
    """A model file, pruned model file or training checkpoint (`pemt_pipeline.models.files`): loads
    as a `TrainedModel` (model in eval mode, ``torch.load(weights_only=True)``); saves a model file
    atomically (a pruned model with its architecture).

    Args:
        filepath: the .pt file.
    """

    def load(self) -> TrainedModel:
        return load_trained(self._existing())

    def save(self, data: TrainedModel) -> None:
        save_trained(data, self._filepath)


@dataclass
class TrainingCheckpoint:
    """A training checkpoint file; its contents (`pemt_pipeline.training.checkpoint`) load on first use."""

    path: Path

    @property
    def name(self) -> str:
        """The path relative to the working directory (the project's) when it lies below it."""
        path = Path(self.path).resolve()
        return str(path.relative_to(Path.cwd().resolve())) if path.is_relative_to(Path.cwd().resolve()) else str(path)

    @functools.cached_property
    def state(self) -> dict[str, Any]:
        return load_checkpoint(self.path)


class TrainingCheckpointDataset(ModelFileDataset):
    """The training checkpoint (`pemt_pipeline.training.checkpoint`): the training loop writes it
    itself while it runs (atomically, to resume after a kill), so saving only checks that the path
    handed over is this file; loading gives a `TrainingCheckpoint` (read, weights_only, on first use).

    Args:
        filepath: the checkpoint file (`<training.checkpoint_dir>/last.pt`).
    """

    def load(self) -> TrainingCheckpoint:
        return TrainingCheckpoint(self._existing())

    def save(self, data: str | Path) -> None:
        if Path(data).resolve() != self._filepath.resolve():
            raise DatasetError(f"training wrote its checkpoint to {str(data)!r}, but this dataset is "
                               f"{str(self._filepath)!r}: training.checkpoint_dir and the catalog disagree")
        if not self._filepath.is_file():
            raise DatasetError(f"training reported the checkpoint {str(data)!r}, which does not exist")


@dataclass
class AuthorsCheckpointFile:
    """An authors' checkpoint (`pemt_pipeline.models.authors`) and their YAML config, if given."""

    checkpoint: AuthorsCheckpoint
    config: dict[str, Any] | None


class AuthorsCheckpointDataset(AbstractDataset[None, AuthorsCheckpointFile]):
    """The authors' released checkpoint (`checkpoint.pyth`, read with ``weights_only=True``) and,
    optionally, the authors' YAML config it was trained with. Read only.

    Args:
        filepath: the checkpoint; None (no `--params import.path=...`) fails with a message saying so.
        config_filepath: the authors' config YAML (layers, heads, dropout); None: the model parameters.
    """

    def __init__(self, filepath: str | None = None, config_filepath: str | None = None,
                 metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath) if filepath else None
        self._config = Path(config_filepath) if config_filepath else None
        self.metadata = metadata

    def load(self) -> AuthorsCheckpointFile:
        if self._filepath is None:
            raise DatasetError("no checkpoint to import: run with --params import.path=/path/to/checkpoint.pyth "
                               "(and optionally import.authors_config=/path/to/their_config.yaml)")
        ckpt = parse_checkpoint(load_state(self._filepath, "authors' checkpoint"), str(self._filepath))
        config = None
        if self._config is not None:
            if not self._config.is_file():
                raise DatasetError(f"import.authors_config {str(self._config)!r} does not exist")
            config = yaml.safe_load(self._config.read_text())
            if not isinstance(config, dict):
                raise DatasetError(f"import.authors_config {str(self._config)!r} is not a YAML mapping")
        return AuthorsCheckpointFile(ckpt, config)

    def save(self, data: None) -> None:
        raise DatasetError("the authors' checkpoint is read only")

    def _exists(self) -> bool:
        return self._filepath is not None and self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        # no filepath (no --params import.path): the run's missing-input check leaves it to load()'s message
        return {"filepath": str(self._filepath) if self._filepath else None,
                "config_filepath": str(self._config) if self._config else None}

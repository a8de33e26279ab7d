"""The negative table as a Kedro dataset: one Parquet file, or a folder of Parquet parts by anchor
range when the table is large (`pemt_pipeline.sampling.tablefile`), under one path (one DVC out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError

from pemt_pipeline.atomic import recover
from pemt_pipeline.sampling import NegativeTable, read_table, write_frame


class NegativeTableDataset(AbstractDataset[pd.DataFrame | NegativeTable, pd.DataFrame]):
    """Saves a `NegativeTable` as built (one file, or its part files, `negative_table`) or a
    DataFrame (one file; a folder of parts past ``save_args: {partition_rows: N}``), crash-safely:
    a kill leaves the previous version, file or folder. Loads either layout as one DataFrame,
    read with pyarrow part after part into numpy columns (anchor order checked across parts).

    Args:
        filepath: the file or folder (a local path).
        save_args: ``partition_rows`` for DataFrames (default: always one file).
    """

    def __init__(self, filepath: str, save_args: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None):
        if "://" in str(filepath):
            raise DatasetError(f"NegativeTableDataset: {filepath.split('://')[0]}:// paths are not supported "
                               "(a local file or folder only)")
        unknown = sorted(set(save_args or {}) - {"partition_rows"})
        if unknown:
            raise DatasetError(f"NegativeTableDataset save_args: unknown {unknown}; known: ['partition_rows']")
        self._path = Path(filepath)
        self._partition_rows = (save_args or {}).get("partition_rows")
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        try:
            return read_table(self._path)
        except FileNotFoundError as exc:
            raise DatasetError(str(exc)) from exc

    def save(self, data: pd.DataFrame | NegativeTable) -> None:
        if isinstance(data, NegativeTable):
            data.write(self._path)
        elif isinstance(data, pd.DataFrame):
            write_frame(data, self._path, self._partition_rows)
        else:
            raise DatasetError(f"negative table {self._path}: expected a NegativeTable or a DataFrame, got "
                               f"{type(data).__name__}")

    def _exists(self) -> bool:
        recover(self._path)
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path), "partition_rows": self._partition_rows}

"""Report outputs as Kedro datasets: the rendered report (HTML + Markdown + figures) and a JSON
file that may not exist yet (the pruning results, which the report shows when present); both are
saved atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from pemt_pipeline.datasets.atomic_files import AtomicJSONDataset
from pemt_pipeline.reporting import Report, save_report


class ReportDataset(AbstractDataset[Report, None]):
    """Saves a `pemt_pipeline.reporting.Report` as <folder>/<stem>.html (self-contained),
    <stem>.md and figures/*.png, each atomically (`pemt_pipeline.reporting.save_report`). Write-only.

    Args:
        folder: output folder.
        stem: file name without extension.
    """

    def __init__(self, folder: str, stem: str = "report", metadata: dict[str, Any] | None = None):
        self._folder, self._stem = Path(folder), stem
        self.metadata = metadata

    def load(self) -> None:
        raise DatasetError(f"the report {str(self._folder / self._stem)}.html is an output only; open it in a browser")

    def save(self, data: Report) -> None:
        save_report(data, self._folder, self._stem)

    def _exists(self) -> bool:
        return (self._folder / f"{self._stem}.html").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"folder": str(self._folder), "stem": self._stem}


class OptionalJSONDataset(AtomicJSONDataset):
    """A JSON file that loads as None while it does not exist (e.g. results of a pipeline that
    has not run yet); saved atomically (`AtomicJSONDataset`)."""

    optional = True  # a pipeline may start without it (pemt_pipeline.hooks.check_inputs_exist)

    def load(self) -> Any:
        if not self._exists():
            return None
        return super().load()

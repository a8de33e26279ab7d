"""Report outputs as Kedro datasets: the rendered report (HTML + Markdown + figures) and a JSON
file that may not exist yet (the pruning results, which the report shows when present); both are
saved atomically."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from pemt_pipeline import storage
from pemt_pipeline.datasets.atomic_files import AtomicJSONDataset
from pemt_pipeline.reporting import Report, save_report


class ReportDataset(AbstractDataset[Report, None]):
    """Saves a `pemt_pipeline.reporting.Report` as <folder>/<stem>.html (self-contained),
    <stem>.md and figures/*.png, each atomically (`pemt_pipeline.reporting.save_report`). Write-only.
    A URL folder (fsspec, `pemt_pipeline.storage`): the report is rendered into a local temporary
    folder, then each file is uploaded whole, figures first, the HTML last.

    Args:
        folder: output folder (local or an fsspec URL).
        stem: file name without extension.
        credentials: storage options of a URL.
    """

    def __init__(self, folder: str, stem: str = "report", metadata: dict[str, Any] | None = None,
                 credentials: dict[str, Any] | None = None):
        storage.refuse_userinfo(folder, "report folder")
        self._folder = folder.rstrip("/") if storage.is_url(folder) else Path(folder)
        self._stem, self._options = stem, dict(credentials or {})
        self.metadata = metadata

    def load(self) -> None:
        raise DatasetError(f"the report {storage.join(self._folder, self._stem)}.html is an output only; open it "
                           "in a browser")

    def save(self, data: Report) -> None:
        if isinstance(self._folder, Path):
            save_report(data, self._folder, self._stem)
            return
        staging = storage.cache_config().root / "uploads"
        staging.mkdir(parents=True, exist_ok=True)
        local = Path(tempfile.mkdtemp(prefix=".report.", dir=staging))
        try:
            for path in save_report(data, local, self._stem).values():  # figures, Markdown, HTML
                storage.put_whole(path, storage.join(self._folder, path.relative_to(local).as_posix()), self._options)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def _exists(self) -> bool:
        html = storage.join(self._folder, f"{self._stem}.html")
        if isinstance(html, Path):
            return html.is_file()
        try:
            return storage.info(html, self._options).get("type") == "file"
        except FileNotFoundError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"folder": storage.redact(self._folder), "stem": self._stem}


class OptionalJSONDataset(AtomicJSONDataset):
    """A JSON file that loads as None while it does not exist (e.g. results of a pipeline that
    has not run yet); saved atomically (`AtomicJSONDataset`)."""

    optional = True  # a pipeline may start without it (pemt_pipeline.hooks.check_inputs_exist)

    def load(self) -> Any:
        if not self._exists():
            return None
        return super().load()

"""Nodes of the `import_checkpoint` pipeline."""

from __future__ import annotations

import logging
from typing import Any

from pemt_pipeline.datasets.model_file import AuthorsCheckpointFile
from pemt_pipeline.models import ModelConfig, TrainedModel
from pemt_pipeline.models.authors import ImportConfig, import_authors

logger = logging.getLogger(__name__)


def import_authors_checkpoint(source: AuthorsCheckpointFile, params: dict[str, Any],
                              model_params: dict[str, Any]) -> tuple[TrainedModel, dict[str, Any]]:
    """The authors' checkpoint as a model file (no CPP head: the release has none) and the import report."""
    model, report = import_authors(source.checkpoint, source.config, ModelConfig.from_dict(model_params),
                                   ImportConfig.from_dict(params))
    logger.info("imported %d of %d tensors from %s; ignored %d (listed in the import report)",
                report["used"] + report["orthogonal_cache_checked"], report["tensors"], report["source"],
                len(report["ignored"]) + len(report["ignored_outside_prefix"]))
    return TrainedModel(model), report

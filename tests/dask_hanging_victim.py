"""Preloaded by the Dask workers that tests/test_ingestion_dask.py starts (``dask worker --preload
<this file>``): a file named ``victim*`` hangs in ingestion, after leaving in $PEMT_TEST_DASK_MARKERS
a marker named ``<pid>.<parent pid>`` (the supervised subprocess decoding it, and the Dask worker
process holding it), so that the test kills that Dask worker mid-file. Other files are untouched.
The supervised subprocesses inherit the patch through the fork. Not to be imported
elsewhere."""

import os
import time
from pathlib import Path

import pemt_pipeline.media.ingest as ingest

MARKERS = "PEMT_TEST_DASK_MARKERS"
_original = getattr(ingest._ingest_media, "__wrapped__", ingest._ingest_media)  # loaded twice: patch once


def _hanging(path, cfg):
    if Path(path).name.startswith("victim"):
        (Path(os.environ[MARKERS]) / f"{os.getpid()}.{os.getppid()}").touch()
        time.sleep(120)
    return _original(path, cfg)


_hanging.__wrapped__ = _original
ingest._ingest_media = _hanging

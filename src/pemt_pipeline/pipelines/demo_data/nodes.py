"""Nodes of the `demo_data` pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pemt_pipeline.media.synthetic import DemoConfig, generate_demo_dataset


def generate_demo_videos(params: dict[str, Any]) -> tuple[dict[str, bytes], pd.DataFrame]:
    """Render the synthetic videos (MP4 bytes by relative path) and their labels table."""
    return generate_demo_dataset(DemoConfig.from_dict(params), progress=True)

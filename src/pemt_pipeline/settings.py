"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Soft merge: `--params ingestion.fps=10` or an environment such as `--env paper` overrides
    # one key and keeps its siblings.
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
}

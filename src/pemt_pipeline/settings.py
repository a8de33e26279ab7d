"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from pemt_pipeline.hooks import RunGuard

# Before the first node: check the run's parameters, then take the run lock (pemt_pipeline.hooks).
HOOKS = (RunGuard(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Soft merge: `--params ingestion.fps=10` or an environment such as `--env paper` overrides
    # one key and keeps its siblings.
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
}

"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from pemt_pipeline.hooks import ObjectStorage, RunGuard, RunParameters
from pemt_pipeline.project_config import CONFIG_LOADER_ARGS

# The run's parameters reach the pipeline registry; before the first node: check the parameters,
# then take the run lock; fsspec URLs get their storage options from the credentials (pemt_pipeline.hooks).
HOOKS = (RunParameters(), ObjectStorage(), RunGuard())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = CONFIG_LOADER_ARGS  # base + env (default local), parameters soft-merged

"""The project's configuration as a Kedro run reads it, for code that runs outside a Kedro session
(benchmarks, the parameter table, notebooks): one loader, the same merge rules as `kedro run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader

from pemt_pipeline.models import ModelConfig

CONFIG_LOADER_ARGS: dict[str, Any] = {
    "base_env": "base",
    "default_run_env": "local",
    # Soft merge: `--params ingestion.fps=10` or an environment such as `--env paper` overrides
    # one key and keeps its siblings.
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
}


def project_parameters(conf_source: str | Path = "conf", env: str | None = None,
                       runtime_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every parameter of conf/base soft-merged with conf/<env> (default: `local`) and the runtime
    parameters, exactly as `kedro run --env <env> --params ...` sees them."""
    loader = OmegaConfigLoader(str(conf_source), env=env, runtime_params=runtime_params, **CONFIG_LOADER_ARGS)
    return loader["parameters"]


def project_model_config(conf_source: str | Path = "conf", env: str | None = None) -> ModelConfig:
    """The `model:` parameters of the project (conf/base merged with conf/<env>) as a ModelConfig."""
    return ModelConfig.from_dict(project_parameters(conf_source, env)["model"])

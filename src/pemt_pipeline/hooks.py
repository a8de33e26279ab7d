"""Kedro hooks: the run's parameters reach the pipeline registry; parameters are checked, and the
run lock taken, before the first node runs.

`RunParameters.after_context_created` gives the pipeline registry the session's parameters (so
`--env` and `--params` can change and add report variants).

`ObjectStorage.after_context_created` sets the storage options of fsspec URLs (`pemt_pipeline.storage`)
from the credentials entry ``object_storage`` (conf/<env>/credentials.yml, never the parameters) and
the read cache from the ``storage`` parameters, before the catalog is built.

`RunGuard.before_pipeline_run`
  1. parses every parameter section that the pipeline being run takes (`params:ingestion`,
     `params:training`, ...) with the config class its nodes use (`PARAMETER_CHECKS`), so that a bad
     value stops the run with one line naming the key, before anything is read, written or pruned;
  2. takes the project's run lock, `data/.pemt_run.lock` (`pemt_pipeline.locking`): one run at a
     time writes the project's outputs. A second run stops at once with a message naming the run
     that holds it, or waits up to PEMT_LOCK_WAIT_S seconds (-1: no limit) when that is set;
  3. checks that every file the pipeline reads and does not write exists, else releases the lock
     and stops with one line naming the pipeline to run first.
The lock is released when the pipeline ends (`after_pipeline_run` / `on_pipeline_error`) and by
the OS when the process dies.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import kedro.framework.project as kedro_project
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from pemt_pipeline import storage
from pemt_pipeline.configs import NON_EMPTY, at_least, check_type, from_params, require
from pemt_pipeline.evaluation.audio import AudioFolderConfig
from pemt_pipeline.evaluation.probe import ProbeConfig
from pemt_pipeline.evaluation.video import VideoEvalConfig
from pemt_pipeline.features.embed import EmbedConfig
from pemt_pipeline.features.export import FeatureExportConfig
from pemt_pipeline.finetuning import FinetuneConfig, PredictConfig
from pemt_pipeline.locking import WAIT_ENV, LockedError, exclusive, wait_seconds
from pemt_pipeline.media.ingest import IngestConfig
from pemt_pipeline.media.synthetic import DemoConfig
from pemt_pipeline.models import ModelConfig
from pemt_pipeline.models.authors import ImportConfig
from pemt_pipeline.pipeline_registry import DEFAULT_CHAIN, use_run_parameters
from pemt_pipeline.pruning import PruningConfig
from pemt_pipeline.evaluation.comparison import variant_params
from pemt_pipeline.sampling.config import SPACES, NegativeConfig
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.training.loop import training_configs
from pemt_pipeline.training.losses import LossConfig

logger = logging.getLogger(__name__)

LOCK_FILE = Path("data") / ".pemt_run.lock"  # relative to the project folder


class ParameterError(ValueError, click.ClickException):
    """A parameter has a wrong type or value (the message names it). The kedro CLI shows it as one
    `Error: ...` line, without a traceback, and exits with status 1."""

    def __init__(self, message: str):
        click.ClickException.__init__(self, message)


class RunLockedError(LockedError, click.ClickException):
    """Another run holds the run lock; shown by the kedro CLI as one `Error: ...` line (status 1)."""

    def __init__(self, message: str):
        click.ClickException.__init__(self, message)


# --------------------------------------------------------------------------- parameter checks
@dataclass(frozen=True)
class ReportSettings:
    """`report:` (conf/base/parameters_report.yml); the variants are checked one by one."""

    steps: int
    seeds: tuple[int, ...]
    checkpoint_root: str
    dvclive_root: str
    progress: bool = True
    variants: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        require("report", self, steps=at_least(1), checkpoint_root=NON_EMPTY, dvclive_root=NON_EMPTY,
                seeds=((lambda v: len(v) > 0 and len(set(v)) == len(v) and all(s >= 0 for s in v)),
                       "a non-empty list of distinct seeds >= 0"),
                variants=(lambda v: all(isinstance(x, Mapping) for x in v.values()),
                          "a mapping of variant mappings"))


def _negatives(p: dict, params: dict) -> None:
    """`space` is the node's (the embedding space); the rest is NegativeConfig."""
    p = dict(p)
    space = check_type("negatives.space", str, p.pop("space", None))
    if space not in SPACES:
        raise ValueError(f"negatives.space must be one of {list(SPACES)}, got {space!r}")
    NegativeConfig.from_dict(p)


def _training(p: dict, params: dict) -> None:
    """As the training node parses it (`training_configs`)."""
    training_configs(p)


def _evaluation(p: dict, params: dict) -> None:
    """Video evaluation, its probe and the audio downstream block (root and labels_csv are paths)."""
    VideoEvalConfig.from_dict(p)
    ProbeConfig.from_dict(p.get("probe"))
    audio = dict(p.get("audio") or {})
    check_type("evaluation.audio.root", str, audio.pop("root", ""))
    check_type("evaluation.audio.labels_csv", str | None, audio.pop("labels_csv", None))
    from_params(AudioFolderConfig, audio, "evaluation.audio")


def _pruning(p: dict, params: dict) -> None:
    cfg = PruningConfig.from_dict(p)
    for target in cfg.targets:
        cfg.search_config(target)


def _report(p: dict, params: dict) -> None:
    from_params(ReportSettings, p, "report")


def _report_variant(name: str, variant: Any, params: dict) -> None:
    """The variant's model and training parameters as its nodes build them."""
    if not isinstance(variant, Mapping):
        raise ValueError(f"report.variants.{name} must be a mapping of model overrides, got {variant!r}")
    _report(params.get("report") or {}, params)  # the keys variant_params reads
    settings = variant_params(params.get("model") or {}, params.get("training") or {}, params.get("report") or {},
                              dict(variant), name)
    ModelConfig.from_dict(settings["model"])
    _training(settings["training"], params)


# parameter name (after `params:`) -> check(value, all parameters)
PARAMETER_CHECKS: dict[str, Callable[[Any, dict], None]] = {
    "demo_data": lambda p, _: DemoConfig.from_dict(p),
    "ingestion": lambda p, _: IngestConfig.from_dict(p),
    "embedding": lambda p, _: EmbedConfig.from_dict(p),
    "model": lambda p, _: ModelConfig.from_dict(p),
    "negatives": _negatives,
    "training": _training,
    "training.loss": lambda p, _: LossConfig.from_dict(p),
    "training.augment": lambda p, _: AugmentConfig.from_dict(p),
    "evaluation": _evaluation,
    "pruning": _pruning,
    "report": _report,
    "import": lambda p, _: ImportConfig.from_dict(p),
    "features": lambda p, _: FeatureExportConfig.from_dict(p),
    "finetune": lambda p, _: FinetuneConfig.from_dict(p),
    "predict": lambda p, _: PredictConfig.from_dict(p),
}
VARIANT_PREFIX = "report.variants."


def parameter_inputs(pipeline) -> list[str]:
    """The parameter names (without `params:`) the pipeline takes, in sorted order."""
    return sorted(name.removeprefix("params:") for name in pipeline.inputs() if name.startswith("params:"))


def check_parameters(names: list[str], params: dict) -> None:
    """Parse each named parameter section with its config class; a ParameterError names the key."""
    for name in names:
        value = params
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        try:
            if name.startswith(VARIANT_PREFIX):
                _report_variant(name.removeprefix(VARIANT_PREFIX), value, params)
            elif name in PARAMETER_CHECKS:
                if not isinstance(value, Mapping):
                    raise ValueError(f"parameter {name} must be a mapping, got {value!r}")
                PARAMETER_CHECKS[name](dict(value), params)
            else:
                logger.debug("no check for parameter %s", name)
        except ValueError as error:
            raise ParameterError(str(error)) from None


def check_model_file(pipeline, runtime_params: Mapping[str, Any] | None) -> None:
    """`--params model_file=...` points the pipelines that read a model at another file; a run that
    writes the model (training) must not also have it, or it would write over that file."""
    if (runtime_params or {}).get("model_file") is None:
        return
    written = sorted(pipeline.all_outputs() & {"pretrained_model", "training_checkpoint"})
    if written:
        raise ParameterError(f"model_file={runtime_params['model_file']!r} names the model the later pipelines "
                             f"read, but this run writes it ({', '.join(written)}: training): run training "
                             "without model_file, and the later pipelines with it")


# --------------------------------------------------------------------------- the hooks
class RunParameters:
    """Hands the session's parameters (with its `--env` and `--params`) to the pipeline registry
    before the pipelines are built, so the report's variants follow the run's configuration."""

    @hook_impl
    def after_context_created(self, context) -> None:
        use_run_parameters(context.config_loader["parameters"])
        # pipelines already built (for another session's parameters) are built again on next use
        kedro_project.pipelines.configure(f"{kedro_project.PACKAGE_NAME}.pipeline_registry")


class ObjectStorage:
    """Storage options (credentials, endpoint) for the run's fsspec URLs from Kedro's credentials
    entry `storage.CREDENTIALS_KEY`, and the local read cache from the ``storage`` parameters
    (`storage.configure`). Absent credentials: fsspec's own defaults (environment, ~/.aws ...)."""

    @hook_impl
    def after_context_created(self, context) -> None:
        try:  # the loader's parameters (with --params): `context.params` would build the pipelines too early
            cfg = storage.StorageConfig.from_dict(context.config_loader["parameters"].get("storage"))
        except ValueError as error:
            raise ParameterError(str(error)) from None
        try:
            credentials = context.config_loader["credentials"]
        except MissingConfigException:
            credentials = {}
        try:
            options = storage.storage_options_by_protocol(credentials.get(storage.CREDENTIALS_KEY), cfg.protocol)
        except ValueError as error:
            raise ParameterError(str(error)) from None
        cache = Path(cfg.cache_dir)
        storage.configure(options, cache if cache.is_absolute() else Path(context.project_path) / cache,
                          cfg.cache_max_gb)


class MissingInputError(click.ClickException):
    """An input of the pipeline does not exist yet; shown by the kedro CLI as one `Error: ...` line
    naming the pipeline to run first (status 1)."""


def producing_pipeline(dataset: str) -> str | None:
    """The registered pipeline (other than the default) that writes `dataset`, preferring the
    earliest of the chain; None when no pipeline writes it (an input the user provides)."""
    for name, pipeline in kedro_project.pipelines.items():
        if name != "__default__" and dataset in pipeline.all_outputs():
            return name
    return None


def dataset_path(dataset) -> str | None:
    """The file or folder a catalog dataset reads or writes (None for in-memory ones)."""
    if dataset is None or isinstance(dataset, MemoryDataset):
        return None
    where = dataset._describe()
    return next((str(v) for k, v in where.items() if k in ("filepath", "path", "folder") and v is not None), None)


def check_inputs_exist(pipeline, catalog) -> None:
    """Every file input of the pipeline that no node of it writes must exist (datasets that load
    as None while missing, `optional = True`, may be absent); else one line saying what to run
    (for several missing inputs: the earliest pipeline of the chain)."""
    written = {dataset_path(catalog.get(name)) for name in pipeline.all_outputs()} - {None}
    missing = []
    for name in sorted(pipeline.inputs()):
        dataset = catalog.get(name)
        path = dataset_path(dataset)  # None: parameters and in-memory datasets
        if path is None or getattr(dataset, "optional", False):
            continue
        if any(path == w or path.startswith(w.rstrip("/") + "/") for w in written):
            continue  # another dataset of this run writes it first (e.g. demo_videos -> source_videos)
        if not catalog.exists(name):
            missing.append((name, path, producing_pipeline(name)))
    if not missing:
        return
    order = {p: i for i, p in enumerate(DEFAULT_CHAIN)}
    name, path, producer = min(missing, key=lambda m: order.get(m[2], len(order)))
    if producer is None:
        raise MissingInputError(f"input {name!r} ({path}) does not exist: create it, or point the catalog at it")
    default = " (or `kedro run`: the whole default chain on the demo data)" if producer in order else ""
    raise MissingInputError(f"{name!r} ({path}) does not exist yet: run `kedro run --pipelines {producer}` "
                            f"first{default}")


class RunGuard:
    """Checks the run's parameters and that its inputs exist, then holds the run lock while the
    pipeline runs."""

    def __init__(self) -> None:
        self._lock = contextlib.ExitStack()

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        check_parameters(parameter_inputs(pipeline), catalog["parameters"].load())
        check_model_file(pipeline, run_params.get("runtime_params"))
        lock_path = Path(run_params.get("project_path") or Path.cwd()) / LOCK_FILE
        hint = (f"Wait for it to finish, or let this run wait for it: {WAIT_ENV}=<seconds> kedro run ... "
                f"(-1: no limit)")
        self._lock.close()
        try:
            self._lock.enter_context(exclusive(lock_path, "the project's data folder", wait_seconds(), hint))
        except LockedError as error:
            raise RunLockedError(str(error)) from None
        try:  # with the lock held: a run that was writing them has finished
            check_inputs_exist(pipeline, catalog)
        except MissingInputError:
            self._lock.close()
            raise

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._lock.close()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._lock.close()

"""Parameters are checked before any work: types (`from_params`), ranges (each config's `validate()`),
and a Kedro run with a bad parameter stops before its first node, leaving data/ untouched.
Also: Kedro's telemetry sends nothing for this project unless the user opts in."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from pemt_pipeline.configs import from_params
from pemt_pipeline.hooks import PARAMETER_CHECKS, VARIANT_PREFIX, ParameterError, ReportSettings, check_parameters
from pemt_pipeline.media.ingest import IngestConfig
from pemt_pipeline.models import ModelConfig
from pemt_pipeline.features.dataset import AugmentConfig
from tests.conftest import PROJECT_ROOT, run_kedro


@dataclass(frozen=True)
class Example:
    count: int = 1
    rate: float = 0.5
    name: str = "a"
    flag: bool = True
    limit: float | None = None
    names: tuple[str, ...] = ("x",)
    pair: tuple[int, int] = (1, 2)
    mode: Literal["fast", "slow"] = "fast"
    extra: dict = None

    def validate(self) -> None:
        if self.count > 100:
            raise ValueError(f"example.count must be <= 100, got {self.count}")


def _error(params: dict) -> str:
    with pytest.raises(ValueError) as info:
        from_params(Example, params, "example")
    return str(info.value)


# --------------------------------------------------------------------------- types
def test_the_audit_case_gives_one_line_naming_the_key():
    for value, shown in ((2.5, "2.5 (float)"), ("abc", "'abc' (str)")):
        with pytest.raises(ValueError) as info:
            IngestConfig.from_dict({"clips_per_video": value})
        assert str(info.value) == f"parameter ingestion.clips_per_video must be an integer, got {shown}"


@pytest.mark.parametrize("value", [2.5, 8.0, "8", True, None])
def test_int_takes_only_ints(value):
    assert _error({"count": value}).startswith("parameter example.count must be an integer, got ")
    assert from_params(Example, {"count": 8}).count == 8


def test_float_takes_ints_and_floats_only():
    assert from_params(Example, {"rate": 2}).rate == 2
    assert from_params(Example, {"rate": 0.25}).rate == 0.25
    assert _error({"rate": "fast"}) == "parameter example.rate must be a number, got 'fast' (str)"
    assert _error({"rate": False}) == "parameter example.rate must be a number, got False (bool)"


def test_bool_and_str_are_exact():
    assert _error({"flag": 1}) == "parameter example.flag must be true or false, got 1 (int)"
    assert _error({"flag": "yes"}) == "parameter example.flag must be true or false, got 'yes' (str)"
    assert _error({"name": 3}) == "parameter example.name must be a string, got 3 (int)"


def test_optional_tuple_literal_and_mapping():
    assert from_params(Example, {"limit": None}).limit is None
    assert from_params(Example, {"limit": 3}).limit == 3
    assert _error({"limit": "x"}) == "parameter example.limit must be a number or null, got 'x' (str)"
    assert from_params(Example, {"names": ["a", "b"]}).names == ("a", "b")  # YAML lists become tuples
    assert _error({"names": ["a", 2]}) == "parameter example.names[1] must be a string, got 2 (int)"
    assert _error({"names": "a"}) == "parameter example.names must be a list of strings, got 'a' (str)"
    assert _error({"pair": [1]}) == "parameter example.pair must be a list of 2 integers, got [1] (list)"
    assert _error({"mode": "medium"}) == "parameter example.mode must be one of ['fast', 'slow'], got 'medium' (str)"
    assert _error({"extra": [1]}).startswith("parameter example.extra must be a mapping")


def test_unknown_missing_and_validate():
    assert "unknown example parameter(s) ['cuont']" in _error({"cuont": 1})
    assert _error({"count": 101}) == "example.count must be <= 100, got 101"  # validate() runs
    with pytest.raises(ValueError, match=r"missing report parameter\(s\) \['steps'"):
        from_params(ReportSettings, {}, "report")


def test_nested_sections_are_named_in_full():
    with pytest.raises(ValueError, match=r"^parameter model.visual.width must be an integer, got 8.5 \(float\)$"):
        ModelConfig.from_dict({"visual": {"width": 8.5}})
    with pytest.raises(ValueError, match=r"^parameter training.augment.short_side_range\[1\] must be an integer"):
        AugmentConfig.from_dict({"short_side_range": [56, "64"]})


# --------------------------------------------------------------------------- ranges, per section
@functools.lru_cache
def _project_params(env: str) -> dict:
    from kedro.config import OmegaConfigLoader

    from pemt_pipeline.settings import CONFIG_LOADER_ARGS

    args = {**CONFIG_LOADER_ARGS, "default_run_env": env}
    return OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **args)["parameters"]


def _conf_params(env: str = "base") -> dict:
    """The checkout's parameters (conf/base, then conf/<env>), a fresh copy."""
    return copy.deepcopy(_project_params(env))


def _with(key: str, value) -> dict:
    params = _conf_params()
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
    return params


@pytest.mark.parametrize("section, key, value, message", [
    ("ingestion", "ingestion.clips_per_video", 0, "ingestion.clips_per_video must be > 0"),
    ("demo_data", "demo_data.n_classes", 99, "n_classes must be in [1, 8]"),
    ("embedding", "embedding.device", "tpu", "embedding.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("model", "model.transformer.dropout", 1.0, "model.transformer.dropout must be in [0, 1), got 1.0"),
    ("model", "model.audio.strides", [2, 2], "model.audio.strides must be a list of 4 values >= 1"),
    ("negatives", "negatives.k", 0, "negatives.k must be >= 1, got 0"),
    ("negatives", "negatives.space", "both", "negatives.space must be one of ['visual', 'audio', 'joint']"),
    ("training", "training.lr", 0, "training.lr must be > 0, got 0"),
    ("training", "training.splits", [], "training.splits must be a non-empty list"),
    ("training", "training.loss.mask_ratio", 1.0, "training.loss.mask_ratio must be in (0, 1), got 1.0"),
    ("training", "training.augment.flip", 1.5, "training.augment.flip must be in [0, 1], got 1.5"),
    ("training.augment", "training.augment.crop", 80, "training.augment.short_side_range must be [min, max]"),
    ("evaluation", "evaluation.retrieval_ks", [1, 0],
     "evaluation.retrieval_ks must be a non-empty list of values >= 1"),
    ("evaluation", "evaluation.probe.top_k", 0, "evaluation.probe.top_k must be >= 1, got 0"),
    ("evaluation", "evaluation.audio.batch_size", "8", "parameter evaluation.audio.batch_size must be an integer"),
    ("pruning", "pruning.targets", [0.5, 0.5], "pruning.targets must be a non-empty list of distinct FLOPs ratios"),
    ("pruning", "pruning.search.penalty", "l1", "pruning.search.penalty must be one of ['ste', 'expected']"),
    ("pruning", "pruning.latency.repeats", 0, "pruning.latency.repeats must be >= 1, got 0"),
    ("report", "report.steps", 0, "report.steps must be >= 1, got 0"),
    ("report.variants.mid_lowrank", "report.variants.mid_lowrank.rank", 0, "model.rank must be >= 1, got 0"),
    ("report.variants.mid_lowrank", "report.variants.mid_lowrank.colour", 1, "report.variants.mid_lowrank: unknown"),
])
def test_range_errors_name_the_key(section, key, value, message):
    check_parameters([section], _conf_params())  # the project's values pass
    with pytest.raises(ParameterError) as info:
        check_parameters([section], _with(key, value))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("env", ["base", "paper"])
def test_every_pipeline_parameter_has_a_check_and_the_project_conf_passes(env, monkeypatch):
    from pemt_pipeline.hooks import parameter_inputs
    from pemt_pipeline.pipeline_registry import register_pipelines

    monkeypatch.chdir(PROJECT_ROOT)  # the report's variant names come from conf/base
    params = _conf_params(env)
    for name, pipeline in register_pipelines().items():
        names = parameter_inputs(pipeline)
        assert names, name
        assert [n for n in names if n not in PARAMETER_CHECKS and not n.startswith(VARIANT_PREFIX)] == [], name
        check_parameters(names, params)


# --------------------------------------------------------------------------- a Kedro run
def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("value", [2.5, "abc"])
def test_bad_parameter_stops_the_run_before_any_node(project, value):
    shard = project / "data/02_intermediate/shards/somevideo.safetensors"  # globals.yml paths.shards
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"an existing shard")
    manifest = project / "data/03_primary/manifest.parquet"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(b"an existing manifest")
    before = _files(project / "data")

    with pytest.raises(ParameterError) as info:
        run_kedro(project, ["ingestion"], {"ingestion": {"clips_per_video": value}})
    assert str(info.value) == (f"parameter ingestion.clips_per_video must be an integer, got {value!r} "
                               f"({type(value).__name__})")
    assert _files(project / "data") == before  # nothing pruned, written or indexed


# --------------------------------------------------------------------------- telemetry
def test_no_telemetry_without_opt_in(project, tmp_path, monkeypatch):
    """With DO_NOT_TRACK / KEDRO_DISABLE_TELEMETRY unset, the project's `.telemetry` (consent:
    false) keeps kedro-telemetry from sending anything, for the checkout and its copies."""
    import kedro_telemetry.plugin as telemetry

    for name in ("DO_NOT_TRACK", "KEDRO_DISABLE_TELEMETRY", "GITHUB_REPOSITORY_OWNER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # a user id would be written here
    sent = []
    monkeypatch.setattr(telemetry, "_send_heap_event", lambda *args, **kwargs: sent.append((args, kwargs)))
    assert telemetry._check_for_telemetry_consent(PROJECT_ROOT) is False
    assert telemetry._check_for_telemetry_consent(project) is False

    pyproject = (project / "pyproject.toml").read_text()
    with pytest.raises(ParameterError):  # the session gets as far as the catalog: telemetry's hook
        run_kedro(project, ["ingestion"], {"ingestion": {"clips_per_video": 0}})
    assert sent == []
    assert (project / "pyproject.toml").read_text() == pyproject  # no telemetry project id added
    assert not (tmp_path / "config").exists()

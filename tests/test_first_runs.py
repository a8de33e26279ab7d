"""A newcomer's first commands: a pipeline run before its inputs exist says in one line what to run
first; report variants follow the run's configuration (--params, --env)."""

from __future__ import annotations

import click
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from tests.conftest import make_project_copy, run_kedro


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    project = make_project_copy(tmp_path / "fresh")
    monkeypatch.chdir(project)
    return project


@pytest.mark.parametrize("pipeline, first", [("report", "ingestion"), ("pruning", "ingestion"),
                                             ("evaluation", "ingestion"), ("negatives", "embedding")])
def test_a_pipeline_without_its_inputs_names_the_pipeline_to_run_first(fresh, pipeline, first):
    with pytest.raises(click.ClickException) as error:
        run_kedro(fresh, [pipeline])
    message = error.value.message
    assert "\n" not in message and f"kedro run --pipelines {first}` first" in message
    assert not (fresh / "data" / "08_reporting").exists()  # nothing ran


def report_namespaces(project, **session_args) -> set[str]:
    import kedro.framework.project as kedro_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, **session_args) as session:
        session.load_context()
        return {n.namespace for n in kedro_project.pipelines["report"].nodes if n.namespace}


def test_report_variants_come_from_the_run_parameters(fresh):
    base = report_namespaces(fresh)
    assert "mid_lowrank" in base
    added = report_namespaces(fresh, runtime_params={"report": {"variants": {"mid_rank16": {"rank": 16}}}})
    assert added == base | {"mid_rank16"}
    env = fresh / "conf" / "small"
    env.mkdir()
    (env / "parameters_report.yml").write_text("report:\n  variants:\n    late_unshared: {fusion: late}\n")
    assert report_namespaces(fresh, env="small") == base | {"late_unshared"}

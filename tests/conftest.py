"""Shared fixtures: the real data beside the checkout, and isolated Kedro project copies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pemt_pipeline.devices import torch_threads

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PEMT_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run torch on one thread: their tensors are small, and the machine has 2 cores."""
    with torch_threads(1):
        yield


def shared_data(name: str) -> Path:
    """A folder of ../shared/data; a test that needs it fails (never skips) when it is missing."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the tests need ../shared/data beside the checkout "
                    "(or PEMT_SHARED_DATA pointing at it)")
    return path


def shared_fixture(name: str) -> Path:
    """A folder of ../shared/fixtures (beside ../shared/data); fails (never skips) when it is missing."""
    path = SHARED_DATA.parent / "fixtures" / name
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the tests need ../shared/fixtures beside the checkout "
                    "(or PEMT_SHARED_DATA pointing at ../shared/data next to it)")
    return path


@pytest.fixture
def real_clips() -> Path:
    return shared_data("real_clips")


def env_params(group: str, overrides: dict | None = None, env: str = "test") -> dict:
    """The parameter group `group` as a Kedro run in `env` sees it (the checkout's conf/base, then
    conf/<env>, merged by the project's config loader: soft, key by key, lists replaced; ${globals:...}
    resolved), then `overrides` merged the same way: for library-level tests, which build their
    configs without a Kedro session."""
    from kedro.config import OmegaConfigLoader
    from omegaconf import OmegaConf

    from pemt_pipeline.settings import CONFIG_LOADER_ARGS

    args = {k: v for k, v in CONFIG_LOADER_ARGS.items() if k != "default_run_env"}
    params = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), env=env or "base", **args)["parameters"][group]
    return OmegaConf.to_container(OmegaConf.merge(params, overrides or {}))


def make_project_copy(where: Path) -> Path:
    """A throwaway copy of the project (configuration and pyproject) in `where`.

    Kedro resolves the catalog's paths against the project folder, so runs in the copy write their
    data into `where/data`, never into the checkout."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "pyproject.toml", where)
    shutil.copy(PROJECT_ROOT / ".telemetry", where)  # Kedro telemetry off, as in the checkout
    shutil.copytree(PROJECT_ROOT / "conf", where / "conf", ignore=shutil.ignore_patterns("local"))
    (where / "conf" / "local").mkdir()
    (where / "src").mkdir()  # the package itself is imported from the installed checkout
    return where


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project copy, made the working directory."""
    path = make_project_copy(tmp_path / "project")
    monkeypatch.chdir(path)
    return path


def run_kedro(project: Path, pipelines: list[str] | None = None, params: dict | None = None, env: str | None = None,
              **run_args):
    """Run pipelines through a KedroSession in a project copy (which must be the working directory);
    `run_args` go to `session.run` (e.g. to_outputs=[...])."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    assert Path.cwd().resolve() == project.resolve(), "run Kedro from the project folder"
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params or {}) as session:
        return session.run(pipeline_names=pipelines, **run_args)


END_TO_END_MODULES = {"test_demo_chain", "test_dvc", "test_embedding_negatives_chain", "test_finetune_chain",
                      "test_ingestion_hostile",
                      "test_ingestion_real_clips", "test_ingestion_resume", "test_paper_env", "test_pruning_chain",
                      "test_quality", "test_report_chain", "test_training_chain", "test_viz"}


# The longest file (6 minutes on the 2-core CI machine) first: `make test` splits the collection in halves
# between its two pytest-xdist workers (--dist worksteal), so it starts at once on the first, and the
# worker that runs out takes half of the other's queue. (test_dvc, ~4 minutes, sits in the second half.)
LONGEST_FIRST = ("test_quality",)


def pytest_collection_modifyitems(config, items):
    """End-to-end tests (Kedro sessions in project copies, DVC, the browser) are marked `slow`:
    `make test-fast` (pytest -m "not slow") runs the rest. LONGEST_FIRST's files go first."""
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in END_TO_END_MODULES or "project" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))  # stable

"""dvc.yaml agrees with Kedro: each stage's data deps are the files its pipeline reads (and does
not write), its outs / metrics / plots the files the pipeline writes, all as catalog datasets."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import MemoryDataset

from tests.conftest import PROJECT_ROOT, make_project_copy

# Files the library writes itself, outside the catalog: dvclive's training curves (dvclive owns
# its folder layout); the report's per-variant checkpoints (resumable training state).
NOT_DATASETS = {"data/08_reporting/dvclive/training/plots/metrics", "data/06_models/report"}


def dataset_paths(dataset, root: Path) -> set[str]:
    """The project-relative paths a dataset reads or writes (empty for in-memory ones)."""
    if isinstance(dataset, MemoryDataset):
        return set()
    where = dataset._describe()
    if "folder" in where and "stem" in where:  # the report: <stem>.html, <stem>.md, figures/
        folder = Path(where["folder"])
        paths = {folder / f"{where['stem']}.html", folder / f"{where['stem']}.md", folder / "figures"}
    else:
        paths = {Path(v) for k, v in where.items() if k in ("filepath", "path")}
    return {str(p.resolve().relative_to(root)) if p.is_absolute() else str(p) for p in paths}


def stage_entries(stage: dict, key: str) -> set[str]:
    out = set()
    for entry in stage.get(key, []):
        path = next(iter(entry)) if isinstance(entry, dict) else entry
        if path.startswith("data/"):
            out.add(path)
    return out


def covered(path: str, by: set[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in by)


def test_dvc_stages_match_the_pipelines_and_the_catalog(tmp_path, monkeypatch):
    project = make_project_copy(tmp_path / "project")
    monkeypatch.chdir(project)
    bootstrap_project(project)
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    from kedro.framework.project import pipelines

    with KedroSession.create(project_path=project) as session:
        catalog = session.load_context().catalog
        problems = []
        produced = set().union(*(stage_entries(st, k) for st in stages.values() for k in ("outs", "metrics", "plots")))
        for name, stage in stages.items():
            args = shlex.split(stage["cmd"])
            pipeline = pipelines[args[args.index("--pipelines") + 1]]
            if "--tags" in args:
                pipeline = pipeline.only_nodes_with_tags(args[args.index("--tags") + 1])
            if "--to-outputs" in args:
                pipeline = pipeline.to_outputs(args[args.index("--to-outputs") + 1])
            # an optional input (loads as None while absent) that no stage produces, e.g. finetune_results
            # for the report (finetune is no dvc stage: it fine-tunes a model file the user names), is read
            # when present and is no dep: dvc would refuse a dep that nothing makes
            reads = set().union(*(dataset_paths(catalog.get(d), project) for d in pipeline.inputs()
                                  if not d.startswith("params:")
                                  and not (getattr(catalog.get(d), "optional", False)
                                           and not any(covered(p, produced) for p in
                                                       dataset_paths(catalog.get(d), project)))))
            writes = set().union(*(dataset_paths(catalog.get(d), project) for d in pipeline.all_outputs()))
            deps = stage_entries(stage, "deps")
            outs = set().union(*(stage_entries(stage, k) for k in ("outs", "metrics", "plots")))
            problems += [f"{name}: reads {p}, not a dvc dep" for p in sorted(reads) if not covered(p, deps)]
            problems += [f"{name}: dvc dep {p} is no input of the pipeline" for p in sorted(deps)
                         if not any(covered(r, {p}) or covered(p, {r}) for r in reads)]
            problems += [f"{name}: writes {p}, not a dvc out" for p in sorted(writes) if not covered(p, outs)]
            problems += [f"{name}: dvc out {p} is no output of the pipeline" for p in sorted(outs - NOT_DATASETS)
                         if not any(covered(w, {p}) or covered(p, {w}) for w in writes)]
    assert not problems, "\n".join(problems)


def test_training_feeds_pruning_and_evaluation_through_catalog_files(tmp_path, monkeypatch):
    """The graph kedro-viz draws: training's model file feeds evaluation, its checkpoint pruning."""
    project = make_project_copy(tmp_path / "project")
    monkeypatch.chdir(project)
    bootstrap_project(project)
    from kedro.framework.project import pipelines

    with KedroSession.create(project_path=project) as session:
        catalog = session.load_context().catalog
        training = pipelines["training"].all_outputs()
        for consumer, edge in (("pruning", "training_checkpoint"), ("evaluation", "pretrained_model")):
            assert edge in training & pipelines[consumer].inputs(), consumer
            assert dataset_paths(catalog.get(edge), project), f"{edge} is a file dataset"

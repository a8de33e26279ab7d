"""`kedro run --pipelines pruning` after the default chain: pruned model files per FLOPs target and
`pruning_results` (schema "pruning_results"), on the demo data with tiny settings."""

import json
import math

import torch

from pemt_pipeline.models import load_model
from pemt_pipeline.pruning import transformer_flops, transformer_parameters
from pemt_pipeline.models import OPS, PrunedModel
from pemt_pipeline.reporting.schema import validate_pruning
from pemt_pipeline.models import load_trained
from tests.conftest import run_kedro

# Beyond the test environment (conf/test), on purpose: two Transformer layers (each depth gets its own
# op; the architecture asserted below has 2 per stream), 6 training steps with a checkpoint at the end
# (the checkpoint the pruning starts from), and a cheaper evaluation (every pruned model is probed too).
CHAIN = {
    "model": {"transformer": {"n_layers": 2}},
    "training": {"steps": 6, "checkpoint_every": 6},
    "evaluation": {"batch_size": 4, "probe": {"max_iter": 20}},
}
# The pruning this test measures (its FLOPs moves, histories and counts are asserted): two targets,
# 16 batches (conf/base's, not the test environment's 2), 8 search and 2 fine-tuning steps.
PRUNING = {
    "targets": [0.75, 0.5], "batch_size": 4, "batches": 16, "init_score": 0.3,
    # SGD moves each gate by its FLOPs: on this tiny model the layers switch one by one (Adam moves
    # every score at the same pace, so all attentions switch together, overshooting a 0.75 target)
    "search": {"steps": 8, "arch_optimizer": "sgd", "arch_lr": 10.0, "flops_weight": 5.0, "lr": 1.0e-3},
    "finetune": {"steps": 2, "lr": 1.0e-3},
    "latency": {"batch_size": 4, "warmup": 1, "repeats": 3},
}
PROBE_KEYS = {"top1", "top_k", "chance_top1", "per_class", "classes", "confusion", "train_top1", "n", "n_train"}
DIRECTION_KEYS = {"n", "median_rank", "chance_median_rank"} | {f"{p}recall@{k}" for p in ("", "chance_")
                                                                 for k in (1, 5, 10)}
STREAMS = {"visual_cnn", "audio_cnn", "visual", "audio", "multimodal"}  # mid fusion


def check_measurements(entry: dict) -> None:
    assert isinstance(entry["flops"], int) and entry["flops"] > 0
    assert isinstance(entry["parameters"], int) and entry["parameters"] > 0
    assert isinstance(entry["latency_ms"], float) and entry["latency_ms"] > 0
    assert set(entry["probe"]) == STREAMS
    for metrics in entry["probe"].values():
        # top5, or top<k> with k capped at the number of classes (4 in this demo set)
        assert set(metrics) == PROBE_KEYS | {f"top{metrics['top_k']}"} and 0 <= metrics["top1"] <= 1
    retrieval = entry["retrieval"]
    assert set(retrieval) == {"video_to_audio", "audio_to_video", "cpp_balanced_accuracy", "cpp_auc", "n_videos"}
    for direction in ("video_to_audio", "audio_to_video"):
        assert set(retrieval[direction]) == DIRECTION_KEYS
        assert retrieval[direction]["n"] == retrieval["n_videos"] >= 2


def test_pruning_pipeline_prunes_to_each_target_and_reports(project):
    run_kedro(project, None, CHAIN, env="test")
    # right after the default chain (as after `make demo`): the whole pipeline, rendering included
    run_kedro(project, ["pruning"], {**CHAIN, "pruning": PRUNING}, env="test")
    report = (project / "data/08_reporting/report.md").read_text()
    assert "## Pruning" in report and "kedro run --pipelines report" in report  # its section, and the hint
    results = json.loads((project / "data/08_reporting/pruning_results.json").read_text())
    validate_pruning(results)  # what the report reads

    assert set(results) == {"config", "base", "targets"}
    assert results["config"] == {"targets": [0.75, 0.5], "search_steps": 8, "finetune_steps": 2,
                                 "model_file": "data/06_models/checkpoints/last.pt"}
    base = results["base"]
    assert set(base) == {"flops", "parameters", "latency_ms", "latency_device", "probe", "retrieval"} | (
        {"latency_ms_cuda"} if torch.cuda.is_available() else set())
    assert base["latency_device"] == "cpu"
    check_measurements(base)
    trained_base = load_trained(project / "data/06_models/pretrained_model.pt")
    assert base["flops"] == transformer_flops(trained_base.model.cfg)
    assert base["parameters"] == trained_base.model.parameter_counts()["transformers"]

    assert [t["target"] for t in results["targets"]] == [0.75, 0.5]
    batch = None
    for entry in results["targets"]:
        assert set(entry) == {"target", "flops", "flops_ratio", "parameters", "latency_ms", "architecture",
                              "ffn_full", "probe", "retrieval", "search_history"} | (
            {"latency_ms_cuda"} if torch.cuda.is_available() else set())
        check_measurements(entry)
        target, ratio = entry["target"], entry["flops_ratio"]
        # below the unpruned FLOPs, and moved toward the target
        assert entry["flops"] < base["flops"] and math.isclose(ratio, entry["flops"] / base["flops"])
        assert abs(ratio - target) < abs(1.0 - target), (target, ratio)
        # the stored count is the pruned model's own; it can exceed the base: a conv kernel is built
        # per depth from a cross-layer-shared attention, so sharing no longer covers it
        assert entry["parameters"] == transformer_parameters(load_trained(
            project / f"data/06_models/pruned/target_{target:g}.pt").model)
        convs = any(d["op"].startswith("conv") for ds in entry["architecture"].values() for d in ds)
        if not convs:
            assert entry["parameters"] <= base["parameters"]
        assert entry["ffn_full"] == 64 and set(entry["architecture"]) == {"visual", "audio", "multimodal"}
        for depths in entry["architecture"].values():
            assert len(depths) == 2
            assert all(d["op"] in OPS and 0 <= d["ffn_units"] <= 64 for d in depths)
        history = entry["search_history"]
        assert [h["step"] for h in history] == list(range(8))
        assert all({"flops", "loss"} <= set(h) for h in history) and history[0]["flops"] == 1.0

        # the saved model: a weights-only file that load_trained (and load_model) read as a PrunedModel
        path = project / f"data/06_models/pruned/target_{target:g}.pt"
        state = torch.load(path, weights_only=True)
        assert state["format"] == "pemt-pruned/1" and state["architecture"] == entry["architecture"]
        trained = load_trained(path)
        assert isinstance(trained.model, PrunedModel) and trained.cpp_head is not None
        assert isinstance(load_model(path), PrunedModel)
        assert transformer_flops(trained.model.cfg, trained.model.architecture()) == entry["flops"]
        if batch is None:
            g = torch.Generator().manual_seed(0)
            batch = (torch.randn(2, 4, 3, 4, 28, 28, generator=g), torch.randn(2, 4, 16, 8, generator=g),
                     torch.ones(2, 4, dtype=torch.bool))
        with torch.no_grad():
            out = trained.model(*batch)
        for name in ("visual", "audio", "multimodal_visual", "multimodal_audio"):
            assert torch.isfinite(getattr(out, name).clips).all()
    assert sorted(p.name for p in (project / "data/06_models/pruned").iterdir()) == ["target_0.5.pt",
                                                                                     "target_0.75.pt"]

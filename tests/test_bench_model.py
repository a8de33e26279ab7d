"""benchmarks/bench_model.py: the baseline revision imported apart and checked against the current model,
the floor of matrix products, the targets."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pemt_pipeline.models import PEMTModel
from pemt_pipeline.project_config import project_model_config

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_model", ROOT / "benchmarks" / "bench_model.py")
bench_model = sys.modules.setdefault("bench_model", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(bench_model)


def _worktrees() -> str:
    return subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_baseline_head_gives_the_current_models_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's worktree, apart from other workers'
    out = tmp_path / "bench.json"
    models_before = sys.modules["pemt_pipeline.models"]
    bench_model.main(["--quick", "--baseline", "HEAD", "--out", str(out), "--threads", "1", "--steps", "1",
                      "--sections", "small_with_cnns", "--device", "cpu", "--targets"])
    results = json.loads(out.read_text())
    rows = results["sections"]["small_with_cnns_threads1"]
    assert [r["variant"] for r in rows] == ["unshared", "cross_layer", "lowrank"]
    for r in rows:
        assert r["same_loss"] and r["loss_abs_diff"] <= 1e-4 * abs(r["baseline_loss"]), r["variant"]
        assert r["grads_compared"] > 0 and r["grad_max_rel_diff"] <= 1e-2
        assert r["baseline_fwd_bwd_ms"] > 0 and r["x_baseline"] > 0 and r["activations_x"] > 0
        # the floor replays every product the FLOP counter counts in the step (convolutions included)
        assert math.isclose(r["floor_gflops"], r["gflops_per_step"], rel_tol=1e-3)
        assert r["floor_ops"].get("convolution", 0) > 0 and r["x_floor"] > 0
    assert results["meta"]["baseline_commit"] == subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert sys.modules["pemt_pipeline.models"] is models_before  # the baseline's modules were put aside
    assert str(tmp_path) not in _worktrees()  # the temporary worktree is gone


def test_expm_gradient_and_dropout_sections_time_both_and_report_errors(tmp_path):
    out = tmp_path / "bench.json"
    bench_model.main(["--steps", "1", "--threads", "1", "--sections", "matrix_exp_gradient,dropout",
                      "--device", "cpu", "--out", str(out), "--targets"])
    sections = json.loads(out.read_text())["sections"]
    expm = sections["matrix_exp_gradient_threads1"]
    assert [r["std"] for r in expm] == [0.0, 0.003, 0.03, 0.3] and expm[0]["a_1norm"] == 0.0
    for r in expm:
        assert r["torch_ms"] > 0 and r["current_ms"] > 0 and r["x_torch"] == r["current_ms"] / r["torch_ms"]
        assert r["current_rel_error"] < 1e-5  # float32 against the float64 reference
    assert [r["shape"] for r in sections["dropout_threads1"]] == ["176x768", "176x3072"]


def test_move_sigmas_gives_every_generator_the_drawn_size():
    base = project_model_config(ROOT / "conf", "base")
    model = PEMTModel(dataclasses.replace(base, share_transformers="lowrank"))
    originals = [p for n, p in model.named_parameters() if n.endswith("parametrizations.weight.original")]

    def generators():  # A = strict lower triangle minus its transpose
        return [p.detach().tril(-1) - p.detach().tril(-1).mT for p in originals]

    assert originals and all(float(a.abs().max()) == 0.0 for a in generators())  # A = 0 at initialisation
    largest = bench_model.move_sigmas(model, 0.03)
    assert all(abs(float(p.detach().std()) - 0.03) < 0.01 for p in originals)
    assert largest == max(float(a.abs().sum(-2).amax()) for a in generators()) > 0
    assert bench_model.move_sigmas(PEMTModel(dataclasses.replace(base, share_transformers="none")), 0.03) is None


def test_bad_baseline_revision_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SystemExit, match="--baseline no-such-rev"):
        bench_model.main(["--baseline", "no-such-rev", "--sections", "small_with_cnns", "--out", "/dev/null"])
    assert str(tmp_path) not in _worktrees()


def test_a_model_computing_something_else_fails_the_check():
    cfg = dataclasses.replace(project_model_config(ROOT / "conf", "base"), share_transformers="lowrank")
    loss = bench_model.transformer_loss(cfg, 2, 3, torch.device("cpu"))
    torch.manual_seed(0)
    current = PEMTModel(cfg)
    torch.manual_seed(1)
    other = PEMTModel(cfg)  # other weights: another function
    row = bench_model.bench_variant(current, other, loss, torch.device("cpu"), steps=1, warmup=1)
    assert not row["same_loss"] and row["loss_abs_diff"] > 0
    target = bench_model.target_lines({"small_with_cnns_threads1": [{"variant": "lowrank", **row}]}, True)
    assert target[0][0] is False and "lowrank" in target[0][1]


def test_fused_attention_counts_as_its_products():
    q, k, v = (torch.randn(2, 3, n, 8) for n in (5, 7, 7))
    forward = bench_model.attention_products(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
                                             (q, k, v), 0)
    assert bench_model.flops_of(bench_model.Floor(forward)) == pytest.approx(
        bench_model.flops_of(lambda: F.scaled_dot_product_attention(q, k, v)))
    backward = bench_model.attention_products(
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default, (q, q, k, v), 0)
    assert bench_model.flops_of(bench_model.Floor(backward)) == pytest.approx(2 * bench_model.flops_of(
        bench_model.Floor(forward)))


def test_floor_replays_the_recorded_products_in_the_same_layouts():
    w = torch.randn(6, 4, requires_grad=True)
    x = torch.randn(3, 4)
    calls = bench_model.record_products(lambda: F.linear(x, w).square().sum())
    floor = bench_model.Floor(calls)
    assert floor.ops == {"mm": 2}  # forward x W^T, backward dW (x needs no gradient)
    assert [a.shape for a in floor.calls[0][1]] == [(3, 4), (4, 6)] and floor.calls[0][1][1].stride() == (1, 4)
    floor()

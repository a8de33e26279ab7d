"""The fusion-comparison report: sections, figures, Markdown twin, conclusion rules, input errors.

Inputs are small synthetic dicts that follow the `fusion_results` / `pruning_results` schemas
exactly (see `pemt_pipeline.reporting.schema`)."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from pemt_pipeline.reporting import (  # noqa: E402
    SECTIONS,
    ReportInputError,
    draw_conclusion,
    render_report,
    save_report,
)

N_CLASSES = 4
N_TEST = 40
STREAMS = {"early": ["visual_cnn", "audio_cnn", "multimodal"],
           "mid": ["visual_cnn", "audio_cnn", "visual", "audio", "multimodal"],
           "late": ["visual_cnn", "audio_cnn", "visual", "audio"]}
MEP = {"early": ["mep_multimodal"], "mid": ["mep_visual", "mep_audio", "mep_multimodal"],
       "late": ["mep_visual", "mep_audio"]}
# Transformer parameter counts of METHOD.md's table (hidden 768, 6 layers, O = 128).
TRANSFORMERS = {("mid", "none"): 127_581_696, ("mid", "lowrank"): 3_843_840,
                ("late", "none"): 85_054_464, ("late", "lowrank"): 2_860_800,
                ("early", "none"): 42_527_232, ("early", "lowrank"): 1_877_760}


def probe_metrics(top1: float) -> dict:
    classes = [f"c{i}" for i in range(N_CLASSES)]
    return {"top1": top1, "top5": min(1.0, top1 + 0.3), "top_k": 5, "chance_top1": 0.25,
            "per_class": {c: top1 for c in classes[:-1]} | {classes[-1]: None},
            "classes": classes, "confusion": [[2] * N_CLASSES for _ in classes],
            "train_top1": min(1.0, top1 + 0.2), "n": N_TEST, "n_train": 120}


def retrieval_direction(r1: float) -> dict:
    out = {"n": N_TEST}
    for k in (1, 5, 10):
        out[f"recall@{k}"] = min(1.0, r1 * k ** 0.5)
        out[f"chance_recall@{k}"] = k / N_TEST
    out["median_rank"] = max(1.0, (1 - r1) * 20)
    out["chance_median_rank"] = (N_TEST + 1) / 2
    return out


def make_run(fusion: str, seed: int, level: float, jitter: float) -> dict:
    """A run whose metrics grow with `level` (0..1); `jitter` moves it per seed."""
    q = level + jitter
    history = []
    for step in range(0, 60, 10):
        decay = 1.0 / (1 + step / 20)
        row = {"step": step, "total": 0.0}
        for i, term in enumerate(MEP[fusion]):
            row[term] = (2.0 + 0.2 * i) * decay + jitter
            row[f"{term}_top1"] = 1 - decay
            row["total"] += row[term]
        row["cpp"] = 0.69 * decay + 0.05
        row["cpp_accuracy"] = 1 - 0.5 * decay
        row["total"] += row["cpp"]
        row["lr"] = 1e-4
        row["clips_per_second"] = 40.0 + level
        history.append(row)
    streams = STREAMS[fusion]
    return {
        "seed": seed, "history": history, "train_seconds": 30.0 + 10 * level,
        "step_seconds": 0.05 + 0.1 * level + jitter / 10, "clips_per_second": 40.0 - 10 * level,
        "peak_memory_mb": 900.0 + 500 * level,
        "probe": {"pretrained": {s: probe_metrics(0.3 + 0.5 * q + 0.01 * i)
                                 for i, s in enumerate(streams)},
                  "random_init": {s: probe_metrics(0.28 + 0.01 * i) for i, s in enumerate(streams)}},
        "retrieval": {"video_to_audio": retrieval_direction(0.05 + 0.3 * q),
                      "audio_to_video": retrieval_direction(0.04 + 0.3 * q),
                      "cpp_balanced_accuracy": 0.5 + 0.4 * q, "n_videos": N_TEST},
    }


def make_variant(fusion: str, sharing: str, level: float, seeds: list[int]) -> dict:
    transformers = TRANSFORMERS[(fusion, sharing)]
    params = {"visual_cnn": 46_000_000, "audio_cnn": 4_700_000, "projections": 2_400_000,
              "embeddings": 40_000}
    names = {"early": ["multimodal"], "mid": ["visual", "audio", "multimodal"],
             "late": ["visual", "audio"]}[fusion]
    if sharing == "none":
        for n in names:
            params[f"transformer_{n}"] = transformers // len(names)
        params["transformers_shared"] = 0
    else:
        private = 6_000 * len(names)
        for n in names:
            params[f"transformer_{n}"] = private // len(names)
        params["transformers_shared"] = transformers - private
    params["transformers"] = transformers
    params["total"] = (params["visual_cnn"] + params["audio_cnn"] + params["projections"]
                       + params["embeddings"] + transformers)
    jitters = [0.0, 0.02, -0.02]
    return {"model": {"fusion": fusion, "share_layers": sharing != "none",
                      "share_transformers": sharing, "rank": 128},
            "parameters": params,
            "runs": [make_run(fusion, s, level, jitters[i % 3]) for i, s in enumerate(seeds)]}


def make_fusion(levels: dict[str, tuple[str, str, float]], seeds: list[int]) -> dict:
    return {"config": {"steps": 50, "seeds": seeds, "batch_size": 8,
                       "data": {"n_train_videos": 120, "n_test_videos": N_TEST,
                                "n_classes": N_CLASSES}},
            "variants": {name: make_variant(f, s, lvl, seeds)
                         for name, (f, s, lvl) in levels.items()}}


def make_pruning() -> dict:
    base_probe = {s: probe_metrics(0.6) for s in STREAMS["mid"]}
    base_retr = {"video_to_audio": retrieval_direction(0.3),
                 "audio_to_video": retrieval_direction(0.28), "cpp_balanced_accuracy": 0.8,
                 "n_videos": N_TEST}
    ops = ["attention", "conv3", "conv1", "skip"]
    targets = []
    for i, target in enumerate((0.7, 0.5)):
        arch = {s: [{"op": ops[(d + i + j) % 4], "ffn_units": 3072 - 512 * ((d + i) % 3)}
                    for d in range(6)] for j, s in enumerate(("visual", "audio", "multimodal"))}
        targets.append({
            "target": target, "flops": int(2e9 * (target + 0.02)), "flops_ratio": target + 0.02,
            "parameters": int(3_843_840 * (0.8 - 0.2 * i)), "latency_ms": 40.0 * (target + 0.1),
            "architecture": arch, "ffn_full": 3072,
            "probe": {s: probe_metrics(0.58 - 0.05 * i) for s in STREAMS["mid"]},
            "retrieval": {"video_to_audio": retrieval_direction(0.28 - 0.03 * i),
                          "audio_to_video": retrieval_direction(0.26 - 0.03 * i),
                          "cpp_balanced_accuracy": 0.78, "n_videos": N_TEST},
            "search_history": [{"step": s, "flops": 1.0 - (1.0 - target) * min(1, s / 30),
                                "loss": 1.0 / (1 + s)} for s in range(0, 50, 5)],
        })
    return {"config": {"targets": [0.7, 0.5], "search_steps": 50, "finetune_steps": 20,
                       "model_file": "data/06_models/mid_lowrank.safetensors"},
            "base": {"flops": 2_000_000_000, "parameters": 3_843_840, "latency_ms": 44.0,
                     "latency_device": "cpu", "probe": base_probe, "retrieval": base_retr},
            "targets": targets}


THREE = {"mid_lowrank": ("mid", "lowrank", 0.6), "mid_none": ("mid", "none", 0.4),
         "late_none": ("late", "none", 0.2)}


@pytest.fixture(scope="module")
def full():
    """Three variants, two seeds, with pruning: rendered once for the module."""
    fusion, pruning = make_fusion(THREE, [0, 1]), make_pruning()
    return fusion, pruning, render_report(fusion, pruning, title="Synthetic <report> & co")


def _headings(markdown: str) -> list[str]:
    return [line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("## ")]


def test_sections_variants_and_figures(full):
    fusion, _, report = full
    assert _headings(report.markdown) == list(SECTIONS)
    for section in SECTIONS:
        assert re.search(rf"<h2 id=\"[a-z-]+\">{section}</h2>", report.html), section
    for name in fusion["variants"]:
        assert name in report.html and name in report.markdown
    expected = {"parameters.png", "training_curves.png", "probe.png", "retrieval.png",
                "cost.png", "pruning_architecture.png", "pruning_tradeoff.png",
                "pruning_search.png"}
    assert set(report.figures) == expected
    for name, png in report.figures.items():
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), name
        assert base64.b64encode(png).decode() in report.html, name
        assert f"](figures/{name})" in report.markdown
    # self-contained: no external asset, title escaped
    assert not re.search(r"""(src|href)=["'](?!data:)""", report.html)
    assert "<script" not in report.html and "<link" not in report.html
    assert "Synthetic &lt;report&gt; &amp; co" in report.html
    assert "Synthetic &lt;report&gt; &amp; co" in report.markdown
    # highlighted Transformer parameters and the saving vs the unshared mid variant
    assert "33.2× fewer than mid_none" in report.html
    assert "**3,843,840**" in report.markdown
    # mean ± std with two seeds, chance levels
    assert "±" in report.html and "chance" in report.markdown


def test_pruning_section_content(full):
    _, pruning, report = full
    for text in ("target 0.7", "target 0.5", "unpruned", "conv3 / ", "Latency (ms, cpu)",
                 "R@1 video → audio"):
        assert text in report.html and text in report.markdown, text
    assert "kedro run --pipelines pruning" not in report.markdown
    pruned = [c for c in report.conclusion if c.startswith("Pruning to FLOPs target")]
    assert len(pruned) == len(pruning["targets"])
    assert "FLOPs are 72.0% of the unpruned model" in pruned[0]


def test_save_report_writes_twin_files(full, tmp_path: Path):
    _, _, report = full
    written = save_report(report, tmp_path / "out", stem="fusion")
    md = (tmp_path / "out" / "fusion.md").read_text(encoding="utf-8")
    html = (tmp_path / "out" / "fusion.html").read_text(encoding="utf-8")
    assert md == report.markdown and html == report.html
    assert written["markdown"] == tmp_path / "out" / "fusion.md"
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == len(report.figures)
    for ref in refs:
        path = tmp_path / "out" / ref
        assert path.is_file() and path.read_bytes().startswith(b"\x89PNG")
    assert not list((tmp_path / "out").rglob("*.tmp"))
    save_report(report, tmp_path / "out", stem="fusion")  # overwriting is fine


def test_conclusion_from_numbers_two_seeds(full):
    _, _, report = full
    first = report.conclusion[0]
    assert first.startswith("mid_lowrank (mid fusion) gives the best mean linear-probe top-1")
    assert "runner-up mid_none" in first and "beyond the seed spread" in first
    sharing = [c for c in report.conclusion if "times fewer Transformer parameters" in c]
    assert sharing and sharing[0].startswith("mid_lowrank (cross-layer sharing + low-rank")
    assert "33.2 times fewer Transformer parameters than mid_none" in sharing[0]
    assert any(c.startswith("mid_none: pretraining beats random init") for c in report.conclusion)
    assert any(c.startswith("Cost: late_none has the shortest") for c in report.conclusion)


def test_conclusion_follows_the_numbers_one_seed():
    """Swap which variant is best: the named winner changes; one seed means within noise; no
    pruning: no section, one line with the command that adds it."""
    a = make_fusion({"mid_lowrank": ("mid", "lowrank", 0.7), "late_none": ("late", "none", 0.3)},
                    [0])
    b = make_fusion({"mid_lowrank": ("mid", "lowrank", 0.3), "late_none": ("late", "none", 0.7)},
                    [0])
    ra, rb = render_report(a), render_report(b)
    assert ra.conclusion[0].startswith("mid_lowrank (mid fusion) gives the best")
    assert rb.conclusion[0].startswith("late_none (late fusion) gives the best")
    assert "runner-up late_none" in ra.conclusion[0]
    assert "runner-up mid_lowrank" in rb.conclusion[0]
    assert "within noise" in ra.conclusion[0] and "within noise" in rb.conclusion[0]
    assert ra.conclusion != rb.conclusion
    assert ra.conclusion[1].startswith("For audio-visual retrieval, mid_lowrank")
    assert rb.conclusion[1].startswith("For audio-visual retrieval, late_none")
    # no multimodal stream in late fusion: each variant is compared on its best stream
    assert "on its" in ra.conclusion[0]
    # one seed: bare values, no ± in the tables
    assert not [line for line in ra.markdown.splitlines() if line.startswith("|") and "±" in line]
    # the conclusion is in both renderings
    for sentence in ra.conclusion:
        assert sentence.split(" (")[0] in ra.markdown
    for report in (ra, rb):
        assert "Pruning" not in _headings(report.markdown)
        assert '<h2 id="pruning">' not in report.html
        assert "`kedro run --pipelines pruning`" in report.markdown
        assert "<code>kedro run --pipelines pruning</code>" in report.html
        assert not any(n.startswith("pruning") for n in report.figures)
        assert _headings(report.markdown) == [s for s in SECTIONS if s != "Pruning"]


def test_no_unshared_reference_and_tie_rules():
    fusion = make_fusion({"mid_lowrank": ("mid", "lowrank", 0.5),
                          "early_lowrank": ("early", "lowrank", 0.5)}, [0, 1])
    for variant in fusion["variants"].values():  # equal multimodal top-1 in both variants
        for run, top1 in zip(variant["runs"], (0.5, 0.6)):
            run["probe"]["pretrained"]["multimodal"]["top1"] = top1
    text = draw_conclusion(fusion)
    assert any("No unshared variant" in c for c in text)
    assert "tie" in text[0]  # same level, same multimodal top-1: a tie, no winner named


def test_missing_required_keys_are_named():
    fusion = make_fusion({"mid_lowrank": ("mid", "lowrank", 0.5)}, [0, 1])
    broken = copy.deepcopy(fusion)
    del broken["variants"]["mid_lowrank"]["runs"][1]["step_seconds"]
    with pytest.raises(ReportInputError,
                       match=r"\['variants'\]\['mid_lowrank'\]\['runs'\]\[1\]: missing required "
                             r"key 'step_seconds'"):
        render_report(broken)
    broken = copy.deepcopy(fusion)
    del broken["config"]["data"]["n_classes"]
    with pytest.raises(ReportInputError, match="'n_classes'"):
        render_report(broken)
    broken = copy.deepcopy(fusion)
    del broken["variants"]["mid_lowrank"]["runs"][0]["retrieval"]["audio_to_video"]["recall@5"]
    with pytest.raises(ReportInputError, match=r"\['audio_to_video'\]: missing required key "
                                               r"'recall@5'"):
        render_report(broken)
    pruning = make_pruning()
    del pruning["targets"][1]["architecture"]
    with pytest.raises(ReportInputError, match=r"pruning_results\['targets'\]\[1\]: missing "
                                               r"required key 'architecture'"):
        render_report(fusion, pruning)
    pruning = make_pruning()
    pruning["targets"][0]["architecture"]["audio"][2]["op"] = "conv5"
    with pytest.raises(ReportInputError, match="unknown op 'conv5'"):
        render_report(fusion, pruning)
    with pytest.raises(ReportInputError, match="'variants'"):
        render_report({"config": fusion["config"]})


def test_strings_escaped_and_partial_inputs():
    """One variant, one seed: a hostile name is escaped; a missing random-init probe, a NaN
    metric, numpy scalars and a pruning run with no target still render."""
    import numpy as np

    fusion = make_fusion({"mid_<b>x</b>|y": ("mid", "lowrank", 0.5)}, [0])
    variant = fusion["variants"]["mid_<b>x</b>|y"]
    run = variant["runs"][0]
    del run["probe"]["random_init"]
    run["probe"]["pretrained"]["visual"]["top1"] = float("nan")
    run["peak_memory_mb"] = np.float32(1234.0)
    variant["parameters"] = {k: np.int64(v) for k, v in variant["parameters"].items()}
    pruning = make_pruning()
    pruning["targets"] = []
    report = render_report(fusion, pruning, title="T")
    assert "<b>x</b>" not in report.html and "mid_&lt;b&gt;x&lt;/b&gt;|y" in report.html
    assert "<b>x</b>" not in report.markdown and r"mid_&lt;b&gt;x&lt;/b&gt;\|y" in report.markdown
    assert "3,843,840" in report.markdown and "1,234" in report.markdown
    assert "n/a" in report.markdown
    assert any("no random-init probe" in c for c in report.conclusion)
    assert any("produced no target" in c for c in report.conclusion)
    assert report.conclusion[0].startswith("Only mid_<b>x</b>|y (mid fusion) has a probe result")
    assert "Pruning" in _headings(report.markdown)

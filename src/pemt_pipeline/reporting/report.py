"""The fusion-comparison report: one self-contained HTML page and its Markdown twin (no Kedro).

`render_report(fusion, pruning)` builds the sections below as one block list (`document`), renders
it to HTML (figures embedded as base64 PNG, inline CSS, no external asset) and to Markdown
(figures referenced as ``figures/<name>.png``), and returns both with the PNG bytes and the
conclusion sentences. `save_report` writes ``<stem>.html``, ``<stem>.md`` and ``figures/*.png``,
each atomically (`pemt_pipeline.atomic`).

Sections: Setup, Parameters, Training curves, Linear probe, Retrieval, Cost, Pruning (only with
pruning results; otherwise one line says how to get it), Conclusion.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pemt_pipeline.atomic import atomic_open, remove_stale_temporaries

from pemt_pipeline.evaluation.retrieval import DIRECTION_LABEL

from . import figures as figs
from .conclusion import RULES, draw_conclusion, unshared_reference
from .document import Bullets, Code, Document, Figure, Heading, Paragraph, Table, render_html, \
    render_markdown
from .finetune import finetune_conclusion, finetune_section
from .schema import OPS, RETRIEVAL_DIRECTIONS, validate_finetune, validate_fusion, validate_pruning
from .stats import (Stat, finite, fmt_int, fmt_num, fmt_pct, fmt_si, fmt_stat, ordered_streams,
                    probe_stat, recall_ks, retrieval_stat, run_stat)

DEFAULT_TITLE = "Fusion comparison: parameter-efficient multimodal Transformers"
FIGURE_DIR = "figures"
SECTIONS = ("Setup", "Parameters", "Training curves", "Linear probe", "Retrieval", "Cost",
            "Pruning", "Conclusion")
PRUNING_HINT = ("Pruning: not included in this report; ", Code("kedro run --pipelines pruning"),
                " adds the pruning section.")
FINETUNE_HINT = ("Fine-tuning: not included in this report; ", Code("kedro run --pipelines finetune"),
                 " fine-tunes the model by the paper's protocols and adds the fine-tuning section.")
FUSION_HINT = ("Fusion comparison: not included in this report yet; ", Code("kedro run --pipelines report"),
               " trains and compares the fusion and sharing variants, and joins this section to it.")
COMPONENTS = ("visual_cnn", "audio_cnn", "projections", "embeddings", "transformer_visual",
              "transformer_audio", "transformer_multimodal", "transformers_shared")
TOTALS = ("transformers", "total")


@dataclass
class Report:
    """html: self-contained page; markdown: its twin, figures referenced as figures/<name>;
    figures: PNG bytes by file name; conclusion: the plain-language sentences."""

    html: str
    markdown: str
    figures: dict[str, bytes] = field(default_factory=dict)
    conclusion: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- sections

def _setup(doc: Document, fusion: Mapping) -> None:
    cfg, variants = fusion["config"], fusion["variants"]
    data = cfg["data"]
    seeds = list(cfg["seeds"])
    doc.add(Heading("Setup"),
            Paragraph(f"{len(variants)} variant{'s' if len(variants) != 1 else ''} trained for "
                      f"{fmt_int(cfg['steps'])} optimiser "
                      f"steps each with batch size {fmt_int(cfg['batch_size'])} and "
                      + (f"{len(seeds)} seeds; metrics are shown as mean ± standard deviation "
                         "(sample, ddof 1) over seeds." if len(seeds) > 1 else
                         f"{len(seeds)} seed; metrics are single runs, so no spread over seeds "
                         "is available.")),
            Table(["Setting", "Value"],
                  [["training videos", fmt_int(data["n_train_videos"])],
                   ["test videos", fmt_int(data["n_test_videos"])],
                   ["classes", fmt_int(data["n_classes"])],
                   ["optimiser steps", fmt_int(cfg["steps"])],
                   ["batch size", fmt_int(cfg["batch_size"])],
                   ["seeds", ", ".join(str(s) for s in seeds) or "none"]]))
    rows = []
    for name, v in variants.items():
        m = v["model"]
        rows.append([name, str(m["fusion"]), "yes" if m["share_layers"] else "no",
                     str(m["share_transformers"]),
                     str(m["rank"]) if m["share_transformers"] == "lowrank" else "—",
                     ", ".join(str(r["seed"]) for r in v["runs"])])
    doc.add(Table(["Variant", "Fusion", "Cross-layer sharing", "Cross-Transformer sharing",
                   "Rank", "Seeds run"], rows, caption="Variants"))


def _parameters(doc: Document, fusion: Mapping, out: dict[str, bytes]) -> None:
    variants = fusion["variants"]
    names = list(variants)
    params = {n: v["parameters"] for n, v in variants.items()}
    extra = sorted({k for p in params.values() for k, val in p.items()
                    if k not in COMPONENTS + TOTALS and finite(val)})
    components = [c for c in COMPONENTS if any(c in p for p in params.values())] + extra
    rows = [[c] + [fmt_int(params[n][c]) if c in params[n] else "—" for n in names]
            for c in components]
    rows += [[c] + [fmt_int(params[n][c]) for n in names] for c in TOTALS]
    highlight = {len(components)}  # the Transformer total
    savings: dict[str, float | None] = {}
    saving_row = ["Transformers vs unshared"]
    for n in names:
        ref = unshared_reference(variants, n)
        pv, pr = params[n]["transformers"], params[ref]["transformers"] if ref else None
        if ref is None or not (finite(pv) and finite(pr)) or pv <= 0:
            savings[n] = None
            is_ref = (variants[n]["model"]["share_transformers"] == "none"
                      and not variants[n]["model"]["share_layers"])
            saving_row.append("reference" if is_ref else "—")
        else:
            savings[n] = pr / pv
            saving_row.append(f"{pr / pv:.1f}× fewer than {ref} ({100 * (1 - pv / pr):.1f}% "
                              "fewer)")
    has_ref = any(s is not None for s in savings.values())
    if has_ref:
        rows.append(saving_row)
        highlight.add(len(rows) - 1)
    doc.add(Heading("Parameters"),
            Paragraph("Parameters per component and variant. \"transformers\" counts every "
                      "Transformer weight (private per-stream Transformers plus the shared "
                      "weights); it is the number parameter sharing reduces."
                      + ("" if has_ref else " No unshared variant (share_transformers none, "
                         "share_layers false) was run, so no saving is computed.")),
            Table(["Component"] + names, rows, highlight=frozenset(highlight)))
    name = "parameters.png"
    out[name] = figs.parameters_figure(names, components, params,
                                       {n: params[n]["transformers"] for n in names}, savings)
    doc.add(Figure(name, out[name], "Parameters per component (left) and Transformer parameters "
                                    "per variant (right; factor fewer than the unshared variant)."))


def _loss_terms(history: list[Mapping]) -> list[str]:
    keys = {k for row in history for k, val in row.items() if finite(val)}
    excluded = ("_top1", "_top5", "_accuracy")
    mep_streams = [k[4:] for k in keys if k.startswith("mep_") and not k.endswith(excluded)]
    mep = [f"mep_{s}" for s in ordered_streams(mep_streams)]
    other = sorted(k for k in keys if k.endswith("_loss"))
    return (["total"] if "total" in keys else []) + mep + (["cpp"] if "cpp" in keys else []) + other


def _curve(runs: list[Mapping], term: str) -> figs.Curve | None:
    per_step: dict[float, list[float]] = {}
    n = 0
    for run in runs:
        seen = False
        for row in run["history"]:
            val = row.get(term)
            if finite(val) and finite(row["step"]):
                per_step.setdefault(row["step"], []).append(float(val))
                seen = True
        n += seen
    if not per_step:
        return None
    steps = np.array(sorted(per_step), dtype=float)
    vals = [per_step[s] for s in sorted(per_step)]
    return (steps, np.array([np.mean(v) for v in vals]), np.array([min(v) for v in vals]),
            np.array([max(v) for v in vals]), n)


def _training(doc: Document, fusion: Mapping, out: dict[str, bytes]) -> None:
    variants = fusion["variants"]
    names = list(variants)
    terms: list[str] = []
    for v in variants.values():
        for t in _loss_terms([row for run in v["runs"] for row in run["history"]]):
            if t not in terms:
                terms.append(t)
    doc.add(Heading("Training curves"))
    if not terms:
        doc.add(Paragraph("No training history was recorded."))
        return
    curves = {n: {t: c for t in terms if (c := _curve(v["runs"], t)) is not None}
              for n, v in variants.items()}
    rows = []
    for n, v in variants.items():
        last = [max(run["history"], key=lambda r: r["step"]) for run in v["runs"] if run["history"]]
        step = Stat.of(r["step"] for r in last)
        rows.append([n, fmt_int(step.max) if step.ok else "n/a"]
                    + [fmt_stat(Stat.of(r.get(t) for r in last)) if any(t in r for r in last)
                       else "—" for t in terms])
    doc.add(Paragraph("Total loss and each loss term against the optimiser step: one line per "
                      "variant, the mean over seeds, with a min-max band over seeds where there "
                      "is more than one. The table gives the values at the last logged step."),
            Table(["Variant", "Last step"] + terms, rows))
    name = "training_curves.png"
    out[name] = figs.curves_figure(names, terms, curves)
    doc.add(Figure(name, out[name], "Training loss terms vs step (mean over seeds, min-max band)."))


def _chance_probe(variants: Mapping, streams: list[str]) -> dict[str, float]:
    chance = {}
    for s in streams:
        vals = Stat.of(run["probe"][init][s]["chance_top1"] for v in variants.values()
                       for run in v["runs"] for init in run["probe"] if s in run["probe"][init])
        if vals.ok:
            chance[s] = vals.mean
    return chance


def _probe(doc: Document, fusion: Mapping, out: dict[str, bytes]) -> None:
    variants = fusion["variants"]
    names = list(variants)
    streams = ordered_streams({s for v in variants.values() for run in v["runs"]
                               for init in run["probe"] for s in run["probe"][init]})
    inits = ["pretrained", "random_init"]
    rows = []
    for n, v in variants.items():
        for init in inits:
            if init == "random_init" and not any(init in run["probe"] for run in v["runs"]):
                rows.append([n, "random init"] + ["n/a"] * len(streams))
                continue
            rows.append([n, init.replace("_", " ")]
                        + [fmt_stat(probe_stat(v, init, s), "pct") for s in streams])
    chance = _chance_probe(variants, streams)
    rows.append(["chance (most frequent class)", ""] + [fmt_pct(chance.get(s)) for s in streams])
    k_rows = []
    for n, v in variants.items():
        cells = []
        for s in streams:
            st = probe_stat(v, "pretrained", s)
            ks = {run["probe"]["pretrained"][s].get("top_k") for run in v["runs"]
                  if s in run["probe"]["pretrained"]}
            k = ks.pop() if len(ks) == 1 else None
            cells.append(fmt_stat(probe_stat(v, "pretrained", s, f"top{k}"), "pct")
                         if st is not None and k is not None else "—")
        k_rows.append([n] + cells)
    top_k = {run["probe"]["pretrained"][s].get("top_k") for v in variants.values()
             for run in v["runs"] for s in run["probe"]["pretrained"]}
    k_label = f"top-{top_k.pop()}" if len(top_k) == 1 else "top-k"
    doc.add(Heading("Linear probe"),
            Paragraph("Linear-probe top-1 on the held-out videos per feature stream, for the "
                      "pretrained model and the same architecture at random initialisation "
                      "(mean ± std over seeds; — where the fusion has no such stream)."),
            Table(["Variant", "Init"] + streams, rows, caption="Probe top-1"),
            Table(["Variant"] + streams, k_rows, caption=f"Probe {k_label} (pretrained)"))
    pre = {(n, s): probe_stat(v, "pretrained", s) for n, v in variants.items() for s in streams}
    rnd = {(n, s): probe_stat(v, "random_init", s) for n, v in variants.items() for s in streams}
    name = "probe.png"
    out[name] = figs.probe_figure(names, streams, pre, rnd, chance)
    doc.add(Figure(name, out[name], "Linear-probe top-1 per stream: solid pretrained, hatched "
                                    "random init, error bars std over seeds, dashed chance."))


def _retrieval(doc: Document, fusion: Mapping, out: dict[str, bytes]) -> None:
    variants = fusion["variants"]
    names = list(variants)
    ks = recall_ks(run["retrieval"][d] for v in variants.values() for run in v["runs"]
                   for d in RETRIEVAL_DIRECTIONS)
    all_runs = [run for v in variants.values() for run in v["runs"]]
    header = ["Variant", "Direction"] + [f"R@{k}" for k in ks] + ["Median rank"]
    rows = []
    for n, v in variants.items():
        for d in RETRIEVAL_DIRECTIONS:
            rows.append([n, DIRECTION_LABEL[d]]
                        + [fmt_stat(retrieval_stat(v, d, f"recall@{k}"), "pct") for k in ks]
                        + [fmt_stat(retrieval_stat(v, d, "median_rank"))])
    chance_recall, chance_median = {}, {}
    for d in RETRIEVAL_DIRECTIONS:
        for k in ks:
            st = Stat.of(r["retrieval"][d].get(f"chance_recall@{k}") for r in all_runs)
            if st.ok:
                chance_recall[(d, k)] = st.mean
        st = Stat.of(r["retrieval"][d].get("chance_median_rank") for r in all_runs)
        if st.ok:
            chance_median[d] = st.mean
        rows.append(["chance", DIRECTION_LABEL[d]]
                    + [fmt_pct(chance_recall.get((d, k))) for k in ks]
                    + [fmt_num(chance_median.get(d))])
    cpp = {n: Stat.of(run["retrieval"]["cpp_balanced_accuracy"] for run in v["runs"])
           for n, v in variants.items()}
    n_videos = Stat.of(r["retrieval"].get("n_videos") for r in all_runs)
    n_txt = f" over {fmt_int(n_videos.max)} held-out videos" if n_videos.ok else ""
    doc.add(Heading("Retrieval"),
            Paragraph(f"Cross-modal retrieval{n_txt}, ranked by the correct-pair-prediction "
                      "score: recall@k (higher is better) and median rank of the true match "
                      "(lower is better), with the chance level of a random ranking."),
            Table(header, rows, caption="Retrieval"),
            Table(["Variant", "CPP balanced accuracy"],
                  [[n, fmt_stat(cpp[n], "pct")] for n in names] + [["chance", fmt_pct(0.5)]],
                  caption="Correct pair prediction on held-out pairs"))
    recall = {(n, d, k): retrieval_stat(v, d, f"recall@{k}") for n, v in variants.items()
              for d in RETRIEVAL_DIRECTIONS for k in ks}
    median = {(n, d): retrieval_stat(v, d, "median_rank") for n, v in variants.items()
              for d in RETRIEVAL_DIRECTIONS}
    name = "retrieval.png"
    out[name] = figs.retrieval_figure(names, ks, recall, median, chance_recall, chance_median, cpp)
    doc.add(Figure(name, out[name], "Retrieval recall@k per direction, median rank and CPP "
                                    "balanced accuracy (dashed: chance)."))


def _cost(doc: Document, fusion: Mapping, out: dict[str, bytes]) -> None:
    variants = fusion["variants"]
    names = list(variants)
    step_ms = {n: Stat.of(1000 * s for s in run_stat(v, "step_seconds").values)
               for n, v in variants.items()}
    clips = {n: run_stat(v, "clips_per_second") for n, v in variants.items()}
    memory = {n: run_stat(v, "peak_memory_mb") for n, v in variants.items()}
    train = {n: run_stat(v, "train_seconds") for n, v in variants.items()}
    rows = [[n, fmt_stat(step_ms[n]), fmt_stat(clips[n]), fmt_stat(memory[n]), fmt_stat(train[n])]
            for n in names]
    doc.add(Heading("Cost"),
            Paragraph("Mean wall time per optimiser step, training throughput, peak resident "
                      "memory during training and total training time (mean ± std over seeds)."),
            Table(["Variant", "Step time (ms)", "Clips / s", "Peak memory (MB)",
                   "Training time (s)"], rows))
    name = "cost.png"
    out[name] = figs.cost_figure(names, step_ms, clips, memory)
    doc.add(Figure(name, out[name], "Step time, throughput and peak memory per variant."))


def _with_delta(value: Any, base: Any) -> str:
    if not finite(value):
        return "n/a"
    if not finite(base):
        return fmt_pct(value)
    return f"{fmt_pct(value)} ({100 * (value - base):+.1f})"


def _recall1(measured: Mapping, direction: str) -> float | None:
    """recall@1 of a pruning measurement; None when its retrieval was skipped (no CPP head)."""
    return measured["retrieval"].get(direction, {}).get("recall@1")


def _pruning(doc: Document, pruning: Mapping, out: dict[str, bytes]) -> None:
    cfg, base, targets = pruning["config"], pruning["base"], pruning["targets"]
    device = str(base.get("latency_device", "cpu"))
    streams = ordered_streams(base["probe"])
    model_file = cfg.get("model_file")
    doc.add(Heading("Pruning"),
            Paragraph(f"Single-path search of attention → convolution and FFN-unit pruning for "
                      f"FLOPs targets {', '.join(f'{t:g}' for t in cfg['targets']) or 'none'} "
                      f"({fmt_int(cfg['search_steps'])} search steps, "
                      f"{fmt_int(cfg['finetune_steps'])} fine-tuning steps"
                      + (f", model {model_file}" if model_file else "") + "). FLOPs are "
                      "analytic per video; parameters count the Transformers; latency is one "
                      f"batch forward on {device}. Metric cells give the value and, in "
                      "brackets, the change in points against the unpruned model."))
    header = (["Model", "Target", "FLOPs / video", "FLOPs ratio", "Transformer params",
               f"Latency (ms, {device})"] + [f"top-1 {s}" for s in streams]
              + ["R@1 video → audio", "R@1 audio → video"])

    def row(label: str, target: str, m: Mapping, ratio: Any) -> list[str]:
        return ([label, target, fmt_si(m["flops"]), f"{ratio:.3f}" if finite(ratio) else "n/a",
                 fmt_int(m["parameters"]), fmt_num(m["latency_ms"])]
                + [(fmt_pct(m["probe"].get(s, {}).get("top1")) if m is base
                    else _with_delta(m["probe"].get(s, {}).get("top1"),
                                     base["probe"][s]["top1"])) for s in streams]
                + [(fmt_pct(_recall1(m, d)) if m is base else _with_delta(_recall1(m, d), _recall1(base, d)))
                   for d in RETRIEVAL_DIRECTIONS])

    rows = [row("unpruned", "—", base, 1.0)]
    rows += [row(f"target {t['target']:g}", f"{t['target']:g}", t, t["flops_ratio"])
             for t in targets]
    doc.add(Table(header, rows, highlight=frozenset({0}), caption="Pruned models vs unpruned"))
    if not targets:
        doc.add(Paragraph("The search produced no pruned model."))
        return
    arch_streams = ordered_streams({s for t in targets for s in t["architecture"]})
    depth = max(len(t["architecture"][s]) for t in targets for s in t["architecture"])
    arch_rows = []
    for t in targets:
        for s in arch_streams:
            entries = list(t["architecture"].get(s, []))
            arch_rows.append([f"{t['target']:g}", s]
                             + [f"{e['op']} / {e['ffn_units']}" for e in entries]
                             + ["—"] * (depth - len(entries)))
    ffn_full = {t["ffn_full"] for t in targets}
    doc.add(Paragraph("Chosen operation per depth and stream (op / FFN units kept"
                      + (f" of {ffn_full.pop()}" if len(ffn_full) == 1 else "") + "); ops: "
                      + ", ".join(OPS) + "."),
            Table(["Target", "Stream"] + [f"depth {d + 1}" for d in range(depth)], arch_rows,
                  caption="Chosen architecture"))
    name = "pruning_architecture.png"
    out[name] = figs.architecture_figure(
        [(f"FLOPs target {t['target']:g} (ratio {t['flops_ratio']:.3f})"
          if finite(t["flops_ratio"]) else f"FLOPs target {t['target']:g}",
          t["architecture"], t["ffn_full"]) for t in targets], arch_streams)
    doc.add(Figure(name, out[name], "Chosen op per depth (columns) and stream (rows), one panel "
                                    "per FLOPs target; cell text: FFN units kept."))
    ratios = [1.0] + [t["flops_ratio"] for t in targets]
    labels = ["unpruned"] + [f"target {t['target']:g}" for t in targets]
    models = [base] + list(targets)
    probe = {s: [m["probe"].get(s, {}).get("top1") for m in models] for s in streams}
    recall1 = {d: [_recall1(m, d) for m in models] for d in RETRIEVAL_DIRECTIONS}
    name = "pruning_tradeoff.png"
    out[name] = figs.tradeoff_figure([r if finite(r) else math.nan for r in ratios], labels,
                                     probe, recall1)
    doc.add(Figure(name, out[name], "Accuracy against FLOPs ratio: probe top-1 per stream and "
                                    "retrieval recall@1, unpruned at 1.0."))
    curves = [(t["target"], [r["step"] for r in t["search_history"]],
               [r["flops"] for r in t["search_history"]]) for t in targets if t["search_history"]]
    if curves:
        name = "pruning_search.png"
        out[name] = figs.search_figure(curves)
        doc.add(Figure(name, out[name], "FLOPs ratio during each search (dashed: its target)."))


# ----------------------------------------------------------------------------- API

def render_report(fusion: dict | None, pruning: dict | None = None, title: str = DEFAULT_TITLE,
                  finetune: dict | None = None) -> Report:
    """Render the fusion-comparison report with the pruning and fine-tuning sections when `pruning` /
    `finetune` are given; with `fusion` None (the report pipeline has not run yet), the others alone.

    Raises `ReportInputError` (a ValueError) naming the first missing required key."""
    if fusion is None and pruning is None and not finetune:
        raise ValueError("nothing to report: run `kedro run --pipelines report`, `--pipelines pruning` or "
                         "`--pipelines finetune` first")
    if fusion is not None:
        validate_fusion(fusion)
    if pruning is not None:
        validate_pruning(pruning)
    if finetune:
        validate_finetune(finetune)
    doc = Document(str(title))
    out: dict[str, bytes] = {}
    if fusion is None:
        doc.add(Paragraph(*FUSION_HINT))
    else:
        _setup(doc, fusion)
        _parameters(doc, fusion, out)
        _training(doc, fusion, out)
        _probe(doc, fusion, out)
        _retrieval(doc, fusion, out)
        _cost(doc, fusion, out)
    if pruning is not None:
        _pruning(doc, pruning, out)
    else:
        doc.add(Paragraph(*PRUNING_HINT))
    if finetune:
        finetune_section(doc, finetune, out)
    else:
        doc.add(Paragraph(*FINETUNE_HINT))
    conclusion = draw_conclusion(fusion, pruning) + (finetune_conclusion(finetune) if finetune else [])
    doc.add(Heading("Conclusion"), Bullets(conclusion), Paragraph(RULES))
    return Report(html=render_html(doc), markdown=render_markdown(doc, FIGURE_DIR), figures=out,
                  conclusion=conclusion)


def save_report(report: Report, folder: str | os.PathLike, stem: str = "report") -> dict[str, Path]:
    """Write `<folder>/<stem>.html`, `<stem>.md` and `figures/<name>` (each atomically: temporary
    file, fsync, rename; figures first, so the Markdown never points at a missing file), after
    removing the temporaries a killed save left. Returns the written paths by role ("html",
    "markdown", "figure:<name>")."""
    folder = Path(folder)
    fig_dir = folder / FIGURE_DIR
    for name in report.figures:
        if Path(name).name != name or not name:
            raise ValueError(f"figure name {name!r} must be a plain file name")
    remove_stale_temporaries(fig_dir)
    remove_stale_temporaries(folder, (f"{stem}.md", f"{stem}.html"))
    written: dict[str, Path] = {}
    for name, png in report.figures.items():
        with atomic_open(fig_dir / name) as f:
            f.write(png)
        written[f"figure:{name}"] = fig_dir / name
    for role, suffix, text in (("markdown", ".md", report.markdown),
                               ("html", ".html", report.html)):
        path = folder / f"{stem}{suffix}"
        with atomic_open(path) as f:
            f.write(text.encode("utf-8"))
        written[role] = path
    return written

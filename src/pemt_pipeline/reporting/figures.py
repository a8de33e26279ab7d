"""The report's matplotlib figures, each returned as PNG bytes (no Kedro, no pyplot).

Figures are drawn on `matplotlib.figure.Figure` with an explicit Agg canvas, so nothing here
touches pyplot's global state or the process's backend; PNGs carry no "Software" metadata, so the
same inputs give the same bytes. Colours are fixed per variant (by its position in the input) so
a variant has the same colour in every figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pemt_pipeline.evaluation.retrieval import DIRECTION_LABEL, RETRIEVAL_DIRECTIONS

from .stats import Stat

DPI = 90
RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
      "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
      "axes.spines.right": False}
OP_COLOURS = {"attention": "#4c72b0", "conv3": "#55a868", "conv1": "#dfc35a", "skip": "#d9d9d9"}


def palette(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


@contextmanager
def _figure(width: float, height: float):
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width, height), dpi=DPI)
        FigureCanvasAgg(fig)
        yield fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _needs_log(values: Sequence[float]) -> bool:
    pos = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return len(pos) > 1 and max(pos) / min(pos) > 50


def _mean_std(stat: Stat | None) -> tuple[float, float]:
    if stat is None or not stat.ok:
        return math.nan, 0.0
    return stat.mean, stat.std


# ----------------------------------------------------------------------------- parameters

def parameters_figure(variants: Sequence[str], components: Sequence[str],
                      values: Mapping[str, Mapping[str, int | None]],
                      transformers: Mapping[str, int], savings: Mapping[str, float | None]) -> bytes:
    """Left: parameters per component, one bar per variant. Right: Transformer parameters per
    variant, annotated with the factor fewer than the unshared reference."""
    colours = palette(len(variants))
    with _figure(max(8.0, 1.2 * len(components) + 4), 3.8) as fig:
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
        x = np.arange(len(components))
        w = 0.8 / len(variants)
        all_vals = []
        for i, v in enumerate(variants):
            ys = [values[v].get(c) for c in components]
            ys = [float(y) if y else math.nan for y in ys]  # 0 or absent: no bar (log scale)
            all_vals += ys
            left.bar(x - 0.4 + w * (i + 0.5), ys, w, label=v, color=colours[i])
        if _needs_log(all_vals):
            left.set_yscale("log")
        left.set_xticks(x, [c.replace("_", "\n", 1) for c in components])
        left.set_ylabel("parameters")
        left.set_title("Parameters per component")
        left.legend(ncols=min(4, len(variants)), loc="lower center", bbox_to_anchor=(0.5, 1.08),
                    frameon=False)
        ts = [float(transformers[v]) for v in variants]
        bars = right.bar(np.arange(len(variants)), ts, 0.6, color=colours)
        if _needs_log(ts):
            right.set_yscale("log")
        for bar, v in zip(bars, variants):
            factor = savings.get(v)
            label = f"{factor:.1f}× fewer" if factor else ""
            right.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                           ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                           textcoords="offset points")
        right.set_xticks(np.arange(len(variants)), variants, rotation=30, ha="right")
        right.set_title("Transformer parameters")
        right.margins(y=0.15)
        fig.tight_layout()
        return _png(fig)


# ----------------------------------------------------------------------------- training curves

Curve = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]  # steps, mean, lo, hi, seeds


def curves_figure(variants: Sequence[str], terms: Sequence[str],
                  curves: Mapping[str, Mapping[str, Curve]]) -> bytes:
    """One panel per loss term: the mean over seeds per variant, min-max band when >1 seed."""
    colours = palette(len(variants))
    ncols = min(3, len(terms))
    nrows = math.ceil(len(terms) / ncols)
    with _figure(3.6 * ncols, 2.8 * nrows) as fig:
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for ax, term in zip(axes, terms):
            for i, v in enumerate(variants):
                if term not in curves.get(v, {}):
                    continue
                steps, mean, lo, hi, n = curves[v][term]
                ax.plot(steps, mean, color=colours[i], label=v, lw=1.4)
                if n > 1:
                    ax.fill_between(steps, lo, hi, color=colours[i], alpha=0.2, lw=0)
            ax.set_title(term)
            ax.set_xlabel("step")
        for ax in axes[len(terms):]:
            ax.set_visible(False)
        axes[0].set_ylabel("loss")
        axes[0].legend()
        fig.tight_layout()
        return _png(fig)


# ----------------------------------------------------------------------------- probe

def probe_figure(variants: Sequence[str], streams: Sequence[str],
                 pretrained: Mapping[tuple[str, str], Stat | None],
                 random_init: Mapping[tuple[str, str], Stat | None],
                 chance: Mapping[str, float]) -> bytes:
    """Top-1 per stream: per variant a solid bar (pretrained) and a hatched one (random init),
    error bars = std over seeds, dashed line = chance (most frequent class)."""
    colours = palette(len(variants))
    has_random = any(s is not None and s.ok for s in random_init.values())
    per = 2 if has_random else 1
    with _figure(min(11.0, max(6.0, 0.35 * len(streams) * len(variants) * per + 3)), 3.8) as fig:
        ax = fig.subplots()
        x = np.arange(len(streams))
        w = 0.84 / (len(variants) * per)
        for i, v in enumerate(variants):
            for j, (stats, kind) in enumerate(((pretrained, "pretrained"),
                                               (random_init, "random init"))[:per]):
                ms = [_mean_std(stats.get((v, s))) for s in streams]
                pos = x - 0.42 + w * (i * per + j + 0.5)
                ax.bar(pos, [100 * m for m, _ in ms], w, yerr=[100 * s for _, s in ms],
                       color=colours[i], alpha=1.0 if j == 0 else 0.45,
                       hatch=None if j == 0 else "//", edgecolor="white" if j == 0 else "black",
                       lw=0.3, capsize=2, error_kw={"lw": 0.8},
                       label=f"{v} ({kind})")
        for k, s in enumerate(streams):
            if s in chance:
                ax.hlines(100 * chance[s], k - 0.45, k + 0.45, colors="black",
                          linestyles="dashed", lw=1, label="chance" if k == 0 else None)
        ax.set_xticks(x, streams)
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Linear probe top-1 per stream (mean ± std over seeds)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        return _png(fig)


# ----------------------------------------------------------------------------- retrieval

def retrieval_figure(variants: Sequence[str], ks: Sequence[int],
                     recall: Mapping[tuple[str, str, int], Stat],
                     median: Mapping[tuple[str, str], Stat],
                     chance_recall: Mapping[tuple[str, int], float],
                     chance_median: Mapping[str, float], cpp: Mapping[str, Stat]) -> bytes:
    """Recall@k per direction, median rank, CPP balanced accuracy; chance as black dashes."""
    colours = palette(len(variants))
    dirs = RETRIEVAL_DIRECTIONS
    with _figure(10, 6.4) as fig:
        axes = fig.subplots(2, 2).ravel()
        w = 0.8 / len(variants)
        for ax, d in zip(axes[:2], dirs):
            x = np.arange(len(ks))
            for i, v in enumerate(variants):
                ms = [_mean_std(recall.get((v, d, k))) for k in ks]
                ax.bar(x - 0.4 + w * (i + 0.5), [100 * m for m, _ in ms], w,
                       yerr=[100 * s for _, s in ms], color=colours[i], label=v, capsize=2,
                       error_kw={"lw": 0.8})
            for j, k in enumerate(ks):
                if (d, k) in chance_recall:
                    ax.hlines(100 * chance_recall[(d, k)], j - 0.45, j + 0.45, colors="black",
                              linestyles="dashed", lw=1, label="chance" if j == 0 else None)
            ax.set_xticks(x, [f"R@{k}" for k in ks])
            ax.set_ylim(0, 100)
            ax.set_ylabel("recall (%)")
            ax.set_title(f"Retrieval {DIRECTION_LABEL[d]}")
        axes[0].legend()
        ax = axes[2]
        x = np.arange(len(dirs))
        for i, v in enumerate(variants):
            ms = [_mean_std(median.get((v, d))) for d in dirs]
            ax.bar(x - 0.4 + w * (i + 0.5), [m for m, _ in ms], w, yerr=[s for _, s in ms],
                   color=colours[i], capsize=2, error_kw={"lw": 0.8})
        for j, d in enumerate(dirs):
            if d in chance_median:
                ax.hlines(chance_median[d], j - 0.45, j + 0.45, colors="black",
                          linestyles="dashed", lw=1)
        ax.set_xticks(x, [DIRECTION_LABEL[d] for d in dirs])
        ax.set_ylabel("median rank (lower is better)")
        ax.set_title("Median rank")
        ax = axes[3]
        ms = [_mean_std(cpp.get(v)) for v in variants]
        ax.bar(np.arange(len(variants)), [100 * m for m, _ in ms], 0.6,
               yerr=[100 * s for _, s in ms], color=colours, capsize=2, error_kw={"lw": 0.8})
        ax.axhline(50, color="black", ls="--", lw=1)
        ax.set_xticks(np.arange(len(variants)), variants, rotation=30, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("balanced accuracy (%)")
        ax.set_title("Correct pair prediction")
        fig.tight_layout()
        return _png(fig)


# ----------------------------------------------------------------------------- cost

def cost_figure(variants: Sequence[str], step_ms: Mapping[str, Stat],
                clips: Mapping[str, Stat], memory: Mapping[str, Stat]) -> bytes:
    colours = palette(len(variants))
    with _figure(max(8.0, 1.0 * len(variants) * 3), 3.2) as fig:
        axes = fig.subplots(1, 3)
        x = np.arange(len(variants))
        for ax, stats, title in ((axes[0], step_ms, "step time (ms)"),
                                 (axes[1], clips, "clips / s"),
                                 (axes[2], memory, "peak memory (MB)")):
            ms = [_mean_std(stats.get(v)) for v in variants]
            ax.bar(x, [m for m, _ in ms], 0.6, yerr=[s for _, s in ms], color=colours, capsize=2,
                   error_kw={"lw": 0.8})
            ax.set_xticks(x, variants, rotation=30, ha="right")
            ax.set_title(title)
        fig.tight_layout()
        return _png(fig)


# ----------------------------------------------------------------------------- pruning

def architecture_figure(panels: Sequence[tuple[str, Mapping[str, Sequence[Mapping]], int]],
                        streams: Sequence[str]) -> bytes:
    """One panel per target: rows = streams, columns = depths, cell colour = chosen op, cell
    text = FFN units kept (of ffn_full)."""
    ops = list(OP_COLOURS)
    cmap = ListedColormap([OP_COLOURS[o] for o in ops])
    depth = max((len(arch.get(s, ())) for _, arch, _ in panels for s in streams), default=1)
    with _figure(max(5.0, 0.9 * depth + 2.2), 0.55 * len(streams) * len(panels)
                 + 0.75 * len(panels) + 0.6) as fig:
        axes = np.atleast_1d(fig.subplots(len(panels), 1, squeeze=False)).ravel()
        for ax, (label, arch, ffn_full) in zip(axes, panels):
            grid = np.full((len(streams), depth), np.nan)
            for r, s in enumerate(streams):
                for c, entry in enumerate(arch.get(s, ())):
                    grid[r, c] = ops.index(entry["op"])
                    units = entry["ffn_units"]
                    ax.text(c, r, f"{units}" if units != ffn_full else f"{units}\n(all)",
                            ha="center", va="center", fontsize=7,
                            color="white" if entry["op"] == "attention" else "black")
            ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-0.5, vmax=len(ops) - 0.5,
                      aspect="auto")
            ax.set_yticks(range(len(streams)), streams)
            ax.set_xticks(range(depth), [str(d + 1) for d in range(depth)])
            ax.set_xticks(np.arange(-0.5, depth), minor=True)
            ax.set_yticks(np.arange(-0.5, len(streams)), minor=True)
            ax.grid(which="minor", color="white", lw=2)
            ax.tick_params(which="minor", length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_title(label, loc="left")
        axes[-1].set_xlabel(f"depth (cell text: FFN units kept of {panels[0][2]})")
        fig.legend(handles=[Patch(color=OP_COLOURS[o], label=o) for o in ops],
                   loc="upper right", ncols=len(ops), frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.93 if len(panels) < 3 else 0.97))
        return _png(fig)


def tradeoff_figure(flops_ratio: Sequence[float], labels: Sequence[str],
                    probe: Mapping[str, Sequence[float]],
                    recall1: Mapping[str, Sequence[float]]) -> bytes:
    """Accuracy against FLOPs ratio (1.0 = unpruned): probe top-1 per stream and R@1 per
    direction, one point per model."""
    order = np.argsort(flops_ratio)
    xs = np.asarray(flops_ratio, dtype=float)[order]
    with _figure(9, 3.6) as fig:
        left, right = fig.subplots(1, 2)
        for ax, series, title, ylabel in ((left, probe, "Probe top-1", "top-1 (%)"),
                                          (right, recall1, "Retrieval R@1", "recall@1 (%)")):
            for name, ys in series.items():
                ys = np.asarray([np.nan if y is None else y for y in ys], dtype=float)[order]
                ax.plot(xs, 100 * ys, marker="o", label=DIRECTION_LABEL.get(name, name))
            for x, lab in zip(xs, np.asarray(labels, dtype=object)[order]):
                ax.axvline(x, color="#bbbbbb", lw=0.6, zorder=0)
                ax.annotate(lab, (x, 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                            textcoords="offset points", fontsize=7, rotation=90, va="top",
                            color="#666666")
            ax.margins(x=0.08)
            ax.set_xlabel("FLOPs ratio (1.0 = unpruned)")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.legend()
        fig.tight_layout()
        return _png(fig)


def search_figure(curves: Sequence[tuple[float, Sequence[float], Sequence[float]]]) -> bytes:
    """FLOPs ratio during each search, with the target as a dashed line of the same colour."""
    colours = palette(len(curves))
    with _figure(6.5, 3.4) as fig:
        ax = fig.subplots()
        for i, (target, steps, flops) in enumerate(curves):
            ax.plot(steps, flops, color=colours[i], label=f"target {target:g}")
            ax.axhline(target, color=colours[i], ls="--", lw=0.9)
        ax.set_xlabel("search step")
        ax.set_ylabel("FLOPs ratio")
        ax.set_title("FLOPs during the search")
        ax.legend()
        fig.tight_layout()
        return _png(fig)


# ----------------------------------------------------------------------------- fine-tuning

def finetune_figure(rows: Sequence[tuple[str, str, float | None, float | None]]) -> bytes:
    """Top-1 per (protocol, initialisation): clip level (solid) and video level (hatched) bars."""
    with _figure(max(6.0, 0.9 * len(rows) + 2.5), 3.6) as fig:
        ax = fig.subplots()
        x = np.arange(len(rows))
        for j, (offset, kind) in enumerate(((-0.2, "clip level"), (0.2, "video level"))):
            ys = [np.nan if r[2 + j] is None else 100 * r[2 + j] for r in rows]
            ax.bar(x + offset, ys, 0.38, color=palette(2)[j], hatch=None if j == 0 else "//",
                   edgecolor="white" if j == 0 else "black", lw=0.3, label=kind)
        ax.set_xticks(x, [f"{protocol}\n{init}" for protocol, init, *_ in rows], fontsize=8)
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Fine-tuning top-1 (pretrained vs random init)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        return _png(fig)

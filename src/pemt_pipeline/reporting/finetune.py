"""The report's fine-tuning section: each protocol's clip- and video-level accuracy, the model it
started from against the random initialisation, and the sentences it adds to the conclusion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import figures as figs
from .document import Document, Figure, Heading, Paragraph, Table
from .schema import FINETUNE_INITS
from .stats import finite, fmt_int, fmt_pct, fmt_points

PROTOCOLS = {
    "video": "Kinetics-Sounds protocol: the whole model on every clip of a video, the authors' two heads",
    "visual_cnn": "UCF101 protocol: the visual CNN and a linear head on single clips",
    "audio_linear_kfold": "ESC-50 protocol: linear evaluation of the frozen audio CNN, k-fold over the folds",
}
INIT_LABEL = {"pretrained": "from the model file", "random_init": "random init"}


def _top(m: Mapping, k: bool = False) -> Any:
    return m.get(f"top{m['top_k']}") if k else m.get("top1")


def _rows(finetune: Mapping) -> list[dict[str, Any]]:
    """One row per (protocol, initialisation): source, clip and video (file) top-1 / top-k, views."""
    rows = []
    for protocol, r in finetune.items():
        if protocol == "audio_linear_kfold":
            for init, streams in r["models"].items():
                m = streams.get("audio_cnn") or next(iter(streams.values()))
                rows.append({"protocol": protocol, "init": init, "source": r.get("model_source") if
                             init == "pretrained" else "random init", "clip": m["clip"]["top1"],
                             "clip_k": m["clip"].get("top5"), "video": m["file"]["top1"],
                             "video_k": m["file"].get("top5"), "k": m["clip"].get("top_k", 5),
                             "views": f"{len(r['folds'])} folds, windows per file {r.get('windows_per_file', 'n/a')}",
                             "std": (m["clip"].get("top1_std"), m["file"].get("top1_std"))})
            continue
        for init in FINETUNE_INITS:
            if init not in r:
                continue
            run = r[init]
            views = run.get("views", {})
            rows.append({"protocol": protocol, "init": init, "source": run["model_source"],
                         "clip": _top(run["clip"]), "clip_k": _top(run["clip"], True), "video": _top(run["video"]),
                         "video_k": _top(run["video"], True), "k": run["clip"]["top_k"],
                         "views": f"{views.get('clips_per_video', float('nan')):.1f} clips x {r['test_crops']} crops",
                         "std": (None, None)})
    return rows


def finetune_section(doc: Document, finetune: Mapping, out: dict[str, bytes]) -> None:
    rows = _rows(finetune)
    doc.add(Heading("Fine-tuning"),
            Paragraph("The paper's downstream protocols (METHOD.md section 5), each from the model file and from "
                      "the same configuration randomly initialised, trained the same way: "
                      + "; ".join(f"{p}: {PROTOCOLS.get(p, p)}" for p in finetune) + ". Clip level scores "
                      "each test view (clip x spatial crop; audio: each log-mel window) alone; video level "
                      "averages a video's (audio: a file's) view probabilities. Audio: mean ± std over folds."))

    def pct(value: Any, std: Any = None) -> str:
        return fmt_pct(value) + (f" ± {100 * std:.1f}" if finite(std) else "")

    table = [[r["protocol"], INIT_LABEL.get(r["init"], r["init"]), str(r["source"]), pct(r["clip"], r["std"][0]),
              fmt_pct(r["clip_k"]), pct(r["video"], r["std"][1]), fmt_pct(r["video_k"]), r["views"]] for r in rows]
    pretrained = frozenset(i for i, r in enumerate(rows) if r["init"] == "pretrained")
    doc.add(Table(["Protocol", "Start", "Model", "Clip top-1", "Clip top-5", "Video top-1", "Video top-5",
                   "Test views"], table, highlight=pretrained,
                  caption="Fine-tuning accuracy (top-5: top-k with k capped at the number of classes)"))
    trained = {p: r for p, r in finetune.items() if p != "audio_linear_kfold"}
    for protocol, r in trained.items():
        run = r["pretrained"]
        steps = run["training"].get("steps")
        doc.add(Paragraph(f"{protocol}: {fmt_int(r.get('n_train_videos'))} training and "
                          f"{fmt_int(r.get('n_test_videos'))} test videos, {len(r.get('classes', []))} classes, "
                          f"{fmt_int(steps)} steps; loss {run['training'].get('first_loss', float('nan')):.3f} → "
                          f"{run['training'].get('final_loss', float('nan')):.3f} from the model file."))
    name = "finetune.png"
    out[name] = figs.finetune_figure([(r["protocol"], INIT_LABEL.get(r["init"], r["init"]), r["clip"], r["video"])
                                      for r in rows])
    doc.add(Figure(name, out[name], "Top-1 per protocol and starting point: clip level (solid) and video "
                                    "level (hatched)."))


def finetune_conclusion(finetune: Mapping) -> list[str]:
    """Per protocol: how much the model file's start beats (or trails) random init, at both levels."""
    out = []
    by_protocol: dict[str, dict[str, dict[str, Any]]] = {}
    for r in _rows(finetune):
        by_protocol.setdefault(r["protocol"], {})[r["init"]] = r
    for protocol, inits in by_protocol.items():
        if "pretrained" not in inits or "random_init" not in inits:
            continue
        p, b = inits["pretrained"], inits["random_init"]
        diffs = [(level, p[key] - b[key] if finite(p[key]) and finite(b[key]) else None)
                 for level, key in (("clip", "clip"), ("video", "video"))]
        out.append(f"Fine-tuning ({protocol}): starting from {p['source']} gives clip top-1 {fmt_pct(p['clip'])} "
                   f"vs {fmt_pct(b['clip'])} from random init ({fmt_points(diffs[0][1])}) and video top-1 "
                   f"{fmt_pct(p['video'])} vs {fmt_pct(b['video'])} ({fmt_points(diffs[1][1])}).")
    return out

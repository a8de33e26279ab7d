"""Parameter counts per component, and the table of every fusion x sharing variant (printed by
`python -m pemt_pipeline.param_table`).

Models are built on the meta device (nothing allocated). A parameter shared by several modules
(the same tensor) is counted once; the orthogonal Sigma counts as its O x O `original` tensor.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from .cnn import audio_resnet, visual_resnet
from .config import FUSIONS, RELEASED_CNN_OPTIONS, ModelConfig
from .fusion import PEMTModel, numel

# (share_layers, share_transformers); the first is the unshared reference
SHARING_VARIANTS = ((False, "none"), (True, "none"), (False, "full"), (True, "full"),
                    (False, "lowrank"), (True, "lowrank"))


def meta_model(cfg: ModelConfig) -> PEMTModel:
    """The model built on the meta device: shapes only, for counting."""
    with torch.device("meta"):
        return PEMTModel(cfg)


def variant_table(cfg: ModelConfig) -> list[dict]:
    """One row per fusion x sharing variant of `cfg` (its other settings kept)."""
    rows = []
    for fusion in FUSIONS:
        reference = None
        for share_layers, share_transformers in SHARING_VARIANTS:
            variant = dataclasses.replace(cfg, fusion=fusion, share_layers=share_layers,
                                          share_transformers=share_transformers)
            counts = meta_model(variant).parameter_counts()
            reference = reference or counts
            rows.append({
                "fusion": fusion, "share_layers": share_layers,
                "share_transformers": share_transformers,
                "transformers": counts["transformers"], "total": counts["total"],
                "transformer_reduction": 1 - counts["transformers"] / reference["transformers"],
                "total_reduction": 1 - counts["total"] / reference["total"],
            })
    return rows


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Right-aligned text table; ints with thousands separators, floats as percentages."""
    def fmt(v):
        if isinstance(v, bool) or isinstance(v, str):
            return str(v)
        return f"{v:,}" if isinstance(v, int) else f"{100 * v:.1f}%"

    cells = [[title for _, title in columns]] + [[fmt(r[k]) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


VARIANT_COLUMNS = [("fusion", "fusion"), ("share_layers", "share_layers"),
                   ("share_transformers", "share_transformers"),
                   ("transformers", "transformer params"), ("total", "total params"),
                   ("transformer_reduction", "transformer reduction"),
                   ("total_reduction", "total reduction")]


def with_cnn_options(cfg: ModelConfig, options: dict[str, dict]) -> ModelConfig:
    """`cfg` with the given per-CNN options replaced (e.g. RELEASED_CNN_OPTIONS)."""
    return dataclasses.replace(cfg, visual=dataclasses.replace(cfg.visual, **options.get("visual", {})),
                               audio=dataclasses.replace(cfg.audio, **options.get("audio", {})))


def default_cnn_options() -> dict[str, dict]:
    """The project's defaults for the options RELEASED_CNN_OPTIONS changes."""
    fresh = ModelConfig()
    return {m: {k: getattr(getattr(fresh, m), k) for k in keys} for m, keys in RELEASED_CNN_OPTIONS.items()}


def cnn_costs(cfg: ModelConfig, frames: int, crop: int, n_mels: int, mel_frames: int) -> dict[str, dict[str, int]]:
    """Parameters and FLOPs (2 x multiply-adds, torch.utils.flop_counter) of each CNN for one clip of
    `frames` x `crop` x `crop` RGB frames / one `n_mels` x `mel_frames` log-mel window; built on the
    meta device (nothing allocated)."""
    out = {}
    with torch.device("meta"):
        for name, cnn, x in (("visual_cnn", visual_resnet(cfg.visual), torch.zeros(1, 3, frames, crop, crop)),
                             ("audio_cnn", audio_resnet(cfg.audio), torch.zeros(1, 1, n_mels, mel_frames))):
            counter = FlopCounterMode(display=False)
            with counter:
                cnn.eval()(x)
            out[name] = {"parameters": numel(cnn.parameters()), "flops_per_clip": int(counter.get_total_flops())}
    return out


def cnn_table(cfg: ModelConfig, frames: int, crop: int, n_mels: int, mel_frames: int) -> list[dict]:
    """CNN parameters and FLOPs per clip with the project's default CNN options and with the authors'
    released ones (the rest of `cfg` kept), and with `cfg`'s own."""
    rows = []
    for label, variant in (("project defaults", with_cnn_options(cfg, default_cnn_options())),
                           ("released code", with_cnn_options(cfg, RELEASED_CNN_OPTIONS)), ("configured", cfg)):
        for cnn, cost in cnn_costs(variant, frames, crop, n_mels, mel_frames).items():
            rows.append({"options": label, "cnn": cnn, **cost})
    return rows


CNN_COLUMNS = [("options", "CNN options"), ("cnn", "CNN"), ("parameters", "parameters"),
               ("flops_per_clip", "FLOPs per clip")]

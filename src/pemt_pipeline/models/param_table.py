"""Parameter counts per component, and the table of every fusion x sharing variant (printed by
`python -m pemt_pipeline.param_table`).

Models are built on the meta device (nothing allocated). A parameter shared by several modules
(the same tensor) is counted once; the orthogonal Sigma counts as its O x O `original` tensor.
"""

from __future__ import annotations

import dataclasses

import torch

from .config import FUSIONS, ModelConfig
from .fusion import PEMTModel

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

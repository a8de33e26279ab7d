"""Configuration of the negative table, embedding spaces and input checks (no Kedro)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from pemt_pipeline.configs import above, at_least, between, check_fields, from_params, one_of, require

VARIANTS = ("similar", "dissimilar", "random")
TRIMS = ("quantile", "range")
MODES = ("exact", "approximate")
DEVICES = ("auto", "cpu", "cuda")
INDEXES = ("auto", "ivf", "ivf_fp16", "flat")
FLAT_BELOW = 50_000  # index="auto": exhaustive (flat) search below this many clips
SPACES = ("visual", "audio", "joint")


@dataclass(frozen=True)
class NegativeConfig:
    """How the negative table is built; `table.py`'s docstring states the rules exactly.

    Rules
      variant   similar | dissimilar | random: which candidates are kept and how they are weighted.
      k         candidates kept per anchor (the table is O(N*k)).
      interval  central share kept. trim="quantile": share of the anchor's candidates (empirical
                order statistics); trim="range": share of the normalised range [0, 1].
      trim      quantile | range (see `table.py`).
      eps       added to every weight, so the far edge of `similar` (1 - d~ = 0) stays drawable.
    Scale
      mode          exact (blockwise matrix products) | approximate (nearest-neighbour index).
      max_block_mb  bound on the working memory of exact mode, whatever N is (and the query-batch
                    size of approximate mode).
      device        auto | cpu | cuda (exact mode's products; approximate mode runs faiss on CPU).
      seed          pilot samples, the random variant, index training: all reproducible from it.
      pilot_size    exact mode: candidates in each anchor block's pilot sample, which brackets the
                    order statistics before the full pass (speed only; results stay exact).
      device_cache_mb  exact mode on an accelerator: candidates are copied there once when they fit
                    in this many MB, else streamed per block.
      partition_rows  `negative_table`: a table of more rows is built in part files (memory
                    O(partition_rows)) and written as a folder of Parquet parts by anchor range;
                    smaller ones stay one file (`tablefile.py`). The table's content is the same.
    Approximate mode
      index        auto | ivf (faiss IndexIVFFlat) | ivf_fp16 (IVF with float16 codes: half the
                   memory, distances from the rounded vectors) | flat (exhaustive faiss index).
                   auto = flat below FLAT_BELOW (50k) clips, where it costs seconds and an IVF index
                   on few points per class loses recall (0.61 at 10k in the benchmark), ivf above.
      nlist        inverted lists; 0 = about 4*sqrt(N).
      n_probe      lists visited per query (recall/speed knob).
      oversample   the index is asked for k*oversample + (largest video's clips) neighbours, so that
                   own-video and trimmed ones can be dropped and k still remain.
      sample_size  random candidates per query batch for the normalisation statistics (min, max),
                   the quantile estimates and the random variant.
      train_size   vectors used to train the index's coarse quantiser (k-means).
      extreme_anchors, extreme_per_anchor  trim="range": d_max comes from the "extreme set", the
                   extreme_per_anchor farthest candidates of extreme_anchors random anchors (found
                   exactly by streamed products); see `approximate.py`.
    """

    variant: str = "similar"
    k: int = 32
    interval: float = 0.95
    trim: str = "quantile"
    eps: float = 1e-3
    mode: str = "exact"
    max_block_mb: float = 256.0
    device: str = "auto"
    seed: int = 0
    pilot_size: int = 8192
    device_cache_mb: float = 2048.0
    partition_rows: int = 50_000_000
    index: str = "auto"
    nlist: int = 0
    n_probe: int = 16
    oversample: int = 4
    sample_size: int = 2048
    train_size: int = 65536
    extreme_anchors: int = 512
    extreme_per_anchor: int = 16

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Types, choices and ranges; ValueError naming `negatives.<key>`."""
        check_fields("negatives", self)  # types first: this config is also built by hand
        count = at_least(1)
        require("negatives", self, variant=one_of(VARIANTS), trim=one_of(TRIMS), mode=one_of(MODES),
                device=one_of(DEVICES), index=one_of(INDEXES), k=count, pilot_size=count, n_probe=count,
                oversample=count, sample_size=count, train_size=count, extreme_anchors=count,
                extreme_per_anchor=count, partition_rows=count, nlist=(lambda v: v >= 0, ">= 0 (0 = automatic)"),
                interval=between(0, 1, low_open=True), max_block_mb=above(0), device_cache_mb=above(0),
                eps=between(0, 1), seed=at_least(0))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> NegativeConfig:
        """Build from a mapping (e.g. Kedro parameters); unknown keys are a ValueError naming them."""
        return from_params(cls, d, "negatives")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def embedding_space(visual: np.ndarray, audio: np.ndarray, space: str) -> np.ndarray:
    """[N, Dv], [N, Da] -> [N, d] float32 embeddings of one space.

    visual / audio: that modality's CNN embeddings as they are (float32), so distances are the
    CNN space's own l2 distances. joint: each modality L2-normalised per clip, concatenated and
    scaled by 1/sqrt(2): every clip has norm 1 and both modalities weigh equally
    (d_joint^2 = (d_visual^2 + d_audio^2) / 2 between unit vectors). Zero vectors stay zero.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    v = _as_2d("visual", visual)
    a = _as_2d("audio", audio)
    if len(v) != len(a):
        raise ValueError(f"visual has {len(v)} clips but audio has {len(a)}")
    if space == "visual":
        return np.asarray(v, dtype=np.float32)
    if space == "audio":
        return np.asarray(a, dtype=np.float32)
    out = np.empty((len(v), v.shape[1] + a.shape[1]), dtype=np.float32)  # [N, Dv + Da]
    step = max(1, (64 << 20) // (4 * out.shape[1]))
    for lo in range(0, len(v), step):
        out[lo:lo + step, :v.shape[1]] = _unit(v[lo:lo + step])
        out[lo:lo + step, v.shape[1]:] = _unit(a[lo:lo + step])
    out *= np.float32(1.0 / np.sqrt(2.0))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _as_2d(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, d], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    return x


def check_inputs(embeddings: np.ndarray, video_index: np.ndarray) -> np.ndarray:
    """Shape/dtype checks (finiteness is checked blockwise later); returns video_index as int64."""
    emb = _as_2d("embeddings", embeddings)
    if emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ValueError(f"embeddings must be non-empty [N, d], got shape {emb.shape}")
    vid = np.asarray(video_index)
    if vid.ndim != 1:
        raise ValueError(f"video_index must be 1-D [N], got shape {vid.shape}")
    if len(vid) != emb.shape[0]:
        raise ValueError(f"video_index has {len(vid)} entries but embeddings has {emb.shape[0]} rows")
    if not np.issubdtype(vid.dtype, np.integer):
        raise ValueError(f"video_index must be integer, got dtype {vid.dtype}")
    return vid.astype(np.int64, copy=False)


def first_bad_row(block: np.ndarray, offset: int, rows: np.ndarray | None = None) -> None:
    """ValueError naming the first clip row whose embedding is NaN or infinite, if any."""
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = int(rows[i]) if rows is not None else offset + i
        raise ValueError(f"embeddings row {row} is not finite (NaN or inf)")

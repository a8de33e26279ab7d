"""Negatives from the learned CNNs (METHOD.md section 4): the negative table recomputed from the CNNs
being trained, every `training.refresh_negatives_every` optimiser steps.

The paper draws content-aware negatives by "instance similarity measured on the CNN embedding space
that our model learns together with the Transformers". Before training, the table comes from the
initial (random) CNNs (pipelines embedding -> negatives). A refresh embeds the training clips with
the current CNNs (eval mode, no gradients) through the embedding pipeline's own code
(`features.embed_clips`, into ``<checkpoint_dir>/refresh_embeddings``) and builds the table with the
`negatives:` parameters (`sampling.build_negative_table`: exact or approximate mode). Its anchors and
candidates are the training clips only, numbered as the training numbers them (`TrainInputs`).

The table is written next to the checkpoints (``negatives-step<step>-<digest>.parquet``, crash-safely)
and the checkpoint names it with its digest, so a resumed run continues with the table in use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from pemt_pipeline.atomic import atomic_open
from pemt_pipeline.configs import check_type
from pemt_pipeline.features.embed import EmbedConfig, embed_clips
from pemt_pipeline.models import ModelConfig, PEMTModel
from pemt_pipeline.sampling import NegativeConfig, build_negative_table, embedding_space
from pemt_pipeline.sampling.config import SPACES

TABLE_COLUMNS = ["anchor", "candidate", "probability"]  # what the sampler reads (and the digest covers)
TABLE_GLOB = "negatives-step*.parquet"
EMBEDDINGS = "refresh_embeddings"  # the last refresh's clip embeddings, in checkpoint_dir
EMBED_IDENTITY = ("crop", "mean", "std", "batch_size")  # embedding parameters that change a refreshed table
NOT_IDENTITY = ("partition_rows",)  # negatives parameters that do not (how a table is stored)


@dataclass(frozen=True)
class RefreshConfig:
    """How a refresh rebuilds the table: the `negatives:` parameters (`space` and the NegativeConfig)
    and the `embedding:` parameters (the clip transform: crop, mean, std; batch size and decode device)."""

    space: str = "joint"
    negatives: NegativeConfig = field(default_factory=NegativeConfig)
    embedding: EmbedConfig = field(default_factory=EmbedConfig)

    @classmethod
    def from_params(cls, negatives: dict[str, Any] | None, embedding: dict[str, Any] | None) -> RefreshConfig:
        """From the YAML ``negatives:`` and ``embedding:`` blocks; ValueErrors name the key."""
        negatives = dict(negatives or {})
        space = check_type("negatives.space", str, negatives.pop("space", "joint"))
        if space not in SPACES:
            raise ValueError(f"negatives.space must be one of {list(SPACES)}, got {space!r}")
        return cls(space, NegativeConfig.from_dict(negatives), EmbedConfig.from_dict(dict(embedding or {})))

    def identity(self) -> dict[str, Any]:
        """What changes a refreshed table (part of the resume identity when refreshes are on)."""
        embedding = {k: getattr(self.embedding, k) for k in EMBED_IDENTITY}
        negatives = {k: v for k, v in self.negatives.to_dict().items() if k not in NOT_IDENTITY}
        return {"space": self.space, "negatives": negatives, "embedding": embedding}


def table_bytes(table: pd.DataFrame) -> bytes:
    """The content of a negative table as the sampler reads it (hashing input)."""
    return pd.util.hash_pandas_object(table[TABLE_COLUMNS], index=False).to_numpy().tobytes()


def table_digest(table: pd.DataFrame) -> str:
    return hashlib.sha256(table_bytes(table)).hexdigest()[:16]


def identity_bytes(cfg: RefreshConfig) -> bytes:
    return json.dumps(cfg.identity(), sort_keys=True).encode()


def refreshed_table(model: PEMTModel, manifest: pd.DataFrame, clip_video_index: np.ndarray, model_cfg: ModelConfig,
                    cfg: RefreshConfig, device: torch.device, work_dir: Path) -> pd.DataFrame:
    """The negative table of the training clips (`manifest`'s real clips, in its order; video
    index [n_clips] `clip_video_index`) in the embedding space of `model`'s current CNNs. The model
    is embedded in eval mode and left in the mode it was in."""
    was_training = model.training
    embed_cfg = dataclasses.replace(cfg.embedding, output_dir=str(Path(work_dir) / EMBEDDINGS), device=str(device),
                                    checkpoint=None, progress=False)
    model.eval()
    try:
        store = embed_clips(manifest, model_cfg, embed_cfg, model=model)
    finally:
        model.train(was_training)
    if len(store.clips) != len(clip_video_index):
        raise ValueError(f"the refresh embedded {len(store.clips)} clips, the training has {len(clip_video_index)}: "
                         "the shards changed during training")
    embeddings = embedding_space(store.visual, store.audio, cfg.space)  # [n_clips, d]
    return build_negative_table(embeddings, clip_video_index, cfg.negatives, progress=False)


def table_ref(table: pd.DataFrame, step: int, seed: int) -> dict[str, Any]:
    """What a checkpoint holds of the refreshed table in use: its file name (in checkpoint_dir), digest,
    refresh step, rows and the seed of its negative sampler."""
    digest = table_digest(table)
    return {"file": f"negatives-step{step:07d}-{digest}.parquet", "digest": digest, "step": int(step),
            "rows": len(table), "seed": int(seed)}


def write_table(table: pd.DataFrame, folder: Path, ref: dict[str, Any]) -> Path:
    """Write `table` crash-safely as `ref`'s file in `folder`."""
    path = Path(folder) / ref["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        table[TABLE_COLUMNS].to_parquet(f, index=False)
    return path


def _checked_table(folder: Path, ref: dict[str, Any]) -> tuple[pd.DataFrame | None, str | None]:
    """The table `ref` (a checkpoint's) read once from `folder`, or why it cannot be read back."""
    path = Path(folder) / ref["file"]
    if not path.is_file():
        return None, f"the refreshed negative table {path} it uses is missing"
    table = pd.read_parquet(path)
    if table_digest(table) != ref["digest"]:
        return None, f"the refreshed negative table {path} it uses has changed"
    return table, None


def table_problem(folder: Path, ref: dict[str, Any]) -> str | None:
    """Why the table `ref` cannot be read back from `folder`; None if it can."""
    return _checked_table(folder, ref)[1]


def read_table(folder: Path, ref: dict[str, Any]) -> pd.DataFrame:
    """The table `ref`, its digest checked (one read of the file)."""
    table, problem = _checked_table(folder, ref)
    if problem:
        raise ValueError(problem)
    return table


def broadcast_table(table: pd.DataFrame | None, device: torch.device) -> pd.DataFrame:
    """Rank 0's table on every rank (exact values: int64 ids, float32 probabilities)."""
    rows = torch.tensor([len(table) if table is not None else 0], dtype=torch.int64, device=device)
    dist.broadcast(rows, src=0)
    n = int(rows.item())
    ids = torch.empty((2, n), dtype=torch.int64, device=device)  # [anchor; candidate]
    probability = torch.empty(n, dtype=torch.float32, device=device)
    if table is not None:
        ids.copy_(torch.from_numpy(np.stack([table["anchor"].to_numpy(np.int64),
                                             table["candidate"].to_numpy(np.int64)])))
        probability.copy_(torch.from_numpy(table["probability"].to_numpy(np.float32)))
    dist.broadcast(ids, src=0)
    dist.broadcast(probability, src=0)
    ids, probability = ids.cpu().numpy(), probability.cpu().numpy()
    return pd.DataFrame({"anchor": ids[0], "candidate": ids[1], "probability": probability})


def remove_tables(folder: Path, names: set[str]) -> None:
    for name in names:
        (Path(folder) / name).unlink(missing_ok=True)

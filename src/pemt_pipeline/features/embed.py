"""Embed every real clip of the ingested videos with the model's visual and audio CNNs.

The CNNs are either randomly initialised from a fixed seed (the paper's prior: a random CNN already
tells similar clips from different ones, METHOD.md section 4) or loaded from a training checkpoint
(so the negative table can be refreshed after training). Clips stream shard by shard in batches of
`batch_size`; the store's arrays are memory-mapped, so memory does not grow with the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pemt_pipeline.configs import DEVICE, NON_EMPTY, above, at_least, from_params, optional, require
from pemt_pipeline.features.store import ClipEmbeddings, EmbeddingWriter
from pemt_pipeline.features.transforms import VIDEO_MEAN, VIDEO_STD, audio_clips, center_crop_clips, normalize
from pemt_pipeline.media.shards import ShardReader
from pemt_pipeline.devices import resolve_device
from pemt_pipeline.models import ModelConfig, PEMTModel, load_model, random_model

CLIP_COLUMNS = ("clip_id", "video_id", "clip_index", "clip_start", "label", "split")


@dataclass(frozen=True)
class EmbedConfig:
    """Embedding parameters (``embedding:`` in conf/base/parameters_embedding.yml documents each)."""

    batch_size: int = 64
    crop: int = 56
    mean: float = VIDEO_MEAN
    std: float = VIDEO_STD
    seed: int = 0
    checkpoint: str | None = None
    device: str = "auto"
    decode_device: str = "cpu"
    output_dir: str = "data/04_feature/clip_embeddings"
    progress: bool = True

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> EmbedConfig:
        return from_params(cls, params, "embedding")  # type checks, then validate()

    def validate(self) -> None:
        require("embedding", self, batch_size=at_least(1), crop=at_least(1), std=above(0), seed=at_least(0),
                checkpoint=optional(NON_EMPTY), device=DEVICE,
                decode_device=DEVICE, output_dir=NON_EMPTY)


def clip_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per real clip of the manifest's videos, in manifest order (clip_id = row)."""
    rows = []
    for video in manifest.itertuples():
        shard = ShardReader(video.shard_path).read(("clip_mask", "clip_start"))
        for index in np.flatnonzero(shard["clip_mask"]):
            rows.append((video.video_id, int(index), float(shard["clip_start"][index]), video.label, video.split))
    table = pd.DataFrame(rows, columns=list(CLIP_COLUMNS[1:]))
    table.insert(0, "clip_id", np.arange(len(table), dtype=np.int64))
    return table


def _batches(manifest: pd.DataFrame, cfg: EmbedConfig, decode_device: torch.device):
    """Yield model inputs (video [n, 3, F, crop, crop], audio [n, 1, M, L]) of real clips in clip-table
    order, `batch_size` at a time (each video is cropped first: videos may differ in size). Frames are
    decoded on `decode_device` (JPEG shards batch-decode there: nvjpeg on a GPU)."""
    videos, audios, held = [], [], 0
    for video in manifest.itertuples():
        reader = ShardReader(video.shard_path)
        shard = reader.read(("log_mel", "clip_mask"))
        real = shard["clip_mask"].astype(bool)
        frames = reader.frames_on(decode_device)[torch.from_numpy(real).to(decode_device)]  # uint8 [n, F, H, W, 3]
        videos.append(normalize(center_crop_clips(frames, cfg.crop), cfg.mean, cfg.std))  # [n, 3, F, crop, crop]
        audios.append(audio_clips(shard["log_mel"][real]).to(decode_device))
        held += int(real.sum())
        while held >= cfg.batch_size:
            v, a = torch.cat(videos), torch.cat(audios)
            yield v[:cfg.batch_size], a[:cfg.batch_size]
            videos, audios, held = [v[cfg.batch_size:]], [a[cfg.batch_size:]], held - cfg.batch_size
    if held:
        yield torch.cat(videos), torch.cat(audios)


def embed_clips(manifest: pd.DataFrame, model_cfg: ModelConfig, cfg: EmbedConfig,
                model: PEMTModel | None = None) -> ClipEmbeddings:
    """Embed every real clip listed by `manifest` (ingestion's) into the store at cfg.output_dir.
    `model`: the model whose CNNs embed (eval mode, on cfg.device; training's negative refresh passes
    the model being trained); default cfg.checkpoint's, or a random one from cfg.seed."""
    if manifest.empty:
        raise ValueError("the manifest lists no video: run ingestion on a folder with usable videos first")
    missing = [p for p in manifest["shard_path"] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) of the manifest are missing, e.g. {missing[0]!r}: "
                                "run the ingestion pipeline again")
    device = resolve_device(cfg.device)
    if model is None:
        model = random_model(model_cfg, cfg.seed) if cfg.checkpoint is None else load_model(cfg.checkpoint, model_cfg)
    model = model.to(device)
    clips = clip_table(manifest)
    dims = {"visual": model.visual_cnn.out_dim, "audio": model.audio_cnn.out_dim}
    writer = EmbeddingWriter(cfg.output_dir, len(clips), dims)
    bar = tqdm(total=len(clips), desc="embedding clips", unit="clip", disable=not cfg.progress)
    try:
        with torch.inference_mode():
            for video, audio in _batches(manifest, cfg, resolve_device(cfg.decode_device)):
                video, audio = video.to(device, non_blocking=True), audio.to(device, non_blocking=True)
                writer.write({"visual": model.visual_cnn(video).float().cpu().numpy(),
                              "audio": model.audio_cnn(audio).float().cpu().numpy()})
                bar.update(len(video))
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    meta = {"checkpoint": cfg.checkpoint, "seed": cfg.seed if cfg.checkpoint is None else None,
            "crop": cfg.crop, "mean": cfg.mean, "std": cfg.std, "model": model.cfg.to_dict(),
            "n_clips": len(clips), "n_videos": int(clips["video_id"].nunique()), "dims": dims}
    return writer.close(clips, meta)

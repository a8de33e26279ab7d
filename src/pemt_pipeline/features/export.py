"""Feature export: every stream of a model over an ingested folder, per clip and per video, as a
memory-mapped store (no Kedro).

Streams (those the model's fusion has, `model_streams`):

    visual_cnn, audio_cnn               the CNN clip embeddings (`PEMTModel.embed_clips`)
    visual, audio                       the unimodal Transformers' outputs (mid, late fusion)
    multimodal_visual, multimodal_audio the multimodal Transformer's visual / audio tokens (early, mid)

The store (a folder, `FeatureStore` reads it):

    clips/<stream>.npy    [n_clips, D]   output at each real clip, clips in `clips.parquet` order
    videos/<stream>.npy   [n_videos, D]  mean over the video's real clips (`masked_mean`)
    summary/<stream>.npy  [n_videos, D]  output at the summary (BOS) token (Transformer streams)
    clips.parquet         one row per clip: row (in clips/*.npy), video_id, video_row, clip_index,
                          start_seconds, end_seconds (seconds from the video's first frame)
    videos.parquet        one row per video: row (in videos/*.npy, summary/*.npy), video_id, split,
                          label, n_clips, clip_row (its first row in clips/*.npy; its clips follow)
    meta.json             model configuration, streams and widths, dtype, crop, counts

Videos go through the model `batch_size` at a time (centre crop, no MEP masking, as evaluation) and
each batch is written at once into arrays preallocated on disk (`ArrayStoreWriter`): memory holds one
batch whatever the number of videos. The store is built in a temporary folder and swapped in at the
end, so a kill leaves the previous export.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pemt_pipeline.configs import DEVICE, NON_EMPTY, at_least, each, from_params, one_of, optional, require
from pemt_pipeline.devices import resolve_device
from pemt_pipeline.features.dataset import AugmentConfig, ShardClipDataset, collate, model_batch
from pemt_pipeline.features.embed import clip_table
from pemt_pipeline.features.store import ArrayStore, ArrayStoreWriter
from pemt_pipeline.models import PEMTModel
from pemt_pipeline.models.fusion import StreamOutput

CNN_STREAMS = ("visual_cnn", "audio_cnn")
TRANSFORMER_STREAMS = ("visual", "audio", "multimodal_visual", "multimodal_audio")
STREAMS = CNN_STREAMS + TRANSFORMER_STREAMS
DTYPES = ("float32", "float16")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over real clips: x [B, T, D], mask [B, T] -> [B, D]."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1)


@dataclass
class StreamBatch:
    """A batch of videos through the model (tensors on the model's device)."""

    video_index: Tensor  # [B] rows of the videos in the manifest
    mask: Tensor  # [B, T] bool, True = real clip
    visual: Tensor  # [B, T, Dv] visual CNN embeddings (0 at padding)
    audio: Tensor  # [B, T, Da] audio CNN embeddings
    streams: dict[str, StreamOutput]  # `PEMTModel.contextualize`'s, keyed by Transformer stream

    def clips(self, stream: str) -> Tensor:
        """[B, T, D] clip outputs of `stream` (one of STREAMS the model has)."""
        if stream in CNN_STREAMS:
            return self.visual if stream == "visual_cnn" else self.audio
        return self.streams[stream].clips


@torch.inference_mode()
def stream_batches(model: PEMTModel, manifest: pd.DataFrame, augment: AugmentConfig, batch_size: int = 8,
                   device: str | torch.device = "auto", progress: bool = True,
                   desc: str = "features") -> Iterator[StreamBatch]:
    """Run `model` (put in eval mode on `device`) over the videos of `manifest`, in manifest order,
    `batch_size` videos at a time, centre crop (AugmentConfig's crop, mean, std), no MEP masking."""
    dev = resolve_device(device) if isinstance(device, str) else device
    model = model.eval().to(dev)
    loader = DataLoader(ShardClipDataset(manifest, augment, train=False), batch_size=batch_size,
                        shuffle=False, collate_fn=collate)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        batch = model_batch(batch, dev, augment)
        mask = batch["clip_mask"]  # [B, T]
        v, a = model.embed_clips(batch["video"], batch["audio"], mask)
        yield StreamBatch(batch["video_index"], mask, v, a, model.contextualize(v, a, mask, mask))


def model_streams(model: PEMTModel) -> tuple[str, ...]:
    """The streams `model` outputs: both CNNs, then the Transformer streams of its fusion."""
    return CNN_STREAMS + tuple(s for s in TRANSFORMER_STREAMS if s.split("_")[0] in model.transformers)


@dataclass(frozen=True)
class FeatureExportConfig:
    """Feature export parameters (``features:`` in conf/base/parameters_features.yml documents each)."""

    batch_size: int = 8
    device: str = "auto"
    streams: tuple[str, ...] | None = None  # None = every stream the model has
    dtype: str = "float32"
    output_dir: str = "data/04_feature/exported_features"
    progress: bool = True

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> FeatureExportConfig:
        return from_params(cls, params, "features")  # type checks, then validate()

    def validate(self) -> None:
        """Ranges and choices; ValueError naming `features.<key>`."""
        require("features", self, batch_size=at_least(1), device=DEVICE, dtype=one_of(DTYPES), output_dir=NON_EMPTY,
                streams=optional(each(one_of(STREAMS))))
        if self.streams is not None and len(set(self.streams)) != len(self.streams):
            raise ValueError(f"features.streams must not repeat a stream, got {list(self.streams)!r}")

    def streams_of(self, model: PEMTModel) -> tuple[str, ...]:
        """The streams to export from `model` (in STREAMS order); a ValueError naming those it lacks."""
        has = model_streams(model)
        if self.streams is None:
            return has
        missing = [s for s in self.streams if s not in has]
        if missing:
            raise ValueError(f"features.streams {missing} are not streams of this model ({model.cfg.fusion} fusion "
                             f"has {list(has)})")
        return tuple(s for s in STREAMS if s in self.streams)


class FeatureStore(ArrayStore):
    """Read side of an export: memory-mapped arrays per stream and the clip / video tables."""

    @property
    def streams(self) -> list[str]:
        return list(self.meta["streams"])

    def _array(self, kind: str, stream: str) -> np.ndarray:
        names = self.streams if kind != "summary" else [s for s in self.streams if s in TRANSFORMER_STREAMS]
        if stream not in names:
            raise ValueError(f"no {kind} array for stream {stream!r} in {str(self.root)!r}; it has {names}")
        return self.load_array(f"{kind}/{stream}")

    def clip_array(self, stream: str) -> np.ndarray:
        """[n_clips, D] output at each clip (rows: `clips`)."""
        return self._array("clips", stream)

    def video_array(self, stream: str) -> np.ndarray:
        """[n_videos, D] mean over each video's real clips (rows: `videos`)."""
        return self._array("videos", stream)

    def summary_array(self, stream: str) -> np.ndarray:
        """[n_videos, D] output at the summary token (Transformer streams only)."""
        return self._array("summary", stream)

    @property
    def clips(self) -> pd.DataFrame:
        return self.table("clips")

    @property
    def videos(self) -> pd.DataFrame:
        return self.table("videos")


def export_tables(manifest: pd.DataFrame, clip_seconds: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The store's clip and video tables (module docstring) for the real clips of `manifest`."""
    clips = clip_table(manifest)  # shard clip_mask and clip_start, manifest order
    n_clips = manifest["n_clips"].to_numpy(np.int64)
    if len(clips) != n_clips.sum():
        raise ValueError(f"the shards hold {len(clips)} real clips, the manifest says {n_clips.sum()}: "
                         "run the ingestion pipeline again")
    clips = pd.DataFrame({"row": clips["clip_id"], "video_id": clips["video_id"],
                          "video_row": np.repeat(np.arange(len(manifest)), n_clips),
                          "clip_index": clips["clip_index"], "start_seconds": clips["clip_start"],
                          "end_seconds": clips["clip_start"] + clip_seconds})
    videos = pd.DataFrame({"row": np.arange(len(manifest)), "video_id": manifest["video_id"].to_numpy(),
                           "split": manifest["split"].to_numpy(),
                           "label": manifest["label"].to_numpy() if "label" in manifest else None,
                           "n_clips": n_clips, "clip_row": np.concatenate([[0], np.cumsum(n_clips)[:-1]])})
    return clips, videos


def export_features(model: PEMTModel, manifest: pd.DataFrame, augment: AugmentConfig, cfg: FeatureExportConfig,
                    clip_seconds: float, meta: dict[str, Any] | None = None) -> FeatureStore:
    """Write the features of `model` over the videos of `manifest` (ingestion's) to the store at
    cfg.output_dir (module docstring); `clip_seconds` is the clips' length (ingestion's span),
    `meta` goes into meta.json beside what the export records."""
    if manifest.empty:
        raise ValueError("the manifest lists no video: run ingestion on a folder with usable videos first")
    streams = cfg.streams_of(model)
    clips, videos = export_tables(manifest, clip_seconds)
    dtype = np.dtype(cfg.dtype)
    writer, dims = None, {}
    try:
        for batch in stream_batches(model, manifest, augment, cfg.batch_size, cfg.device, cfg.progress,
                                    desc="exporting features"):
            if writer is None:  # the widths are the model's outputs (a pruned model's too)
                dims = {s: int(batch.clips(s).shape[-1]) for s in streams}
                shapes = {f"{kind}/{s}": (n, dims[s]) for s in streams
                          for kind, n in (("clips", len(clips)), ("videos", len(videos)))}
                shapes |= {f"summary/{s}": (len(videos), dims[s]) for s in streams if s in TRANSFORMER_STREAMS}
                writer = ArrayStoreWriter(cfg.output_dir, shapes, dtype)
            mask = batch.mask
            for s in streams:
                x = batch.clips(s)  # [B, T, D]
                writer.append(f"clips/{s}", x[mask].float().cpu().numpy())  # real clips, video by video
                writer.append(f"videos/{s}", masked_mean(x.float(), mask).cpu().numpy())
                if s in TRANSFORMER_STREAMS:
                    writer.append(f"summary/{s}", batch.streams[s].summary.float().cpu().numpy())
        record = {**(meta or {}), "model": model.cfg.to_dict(), "streams": list(streams), "dims": dims,
                  "dtype": cfg.dtype, "crop": augment.crop, "mean": augment.mean, "std": augment.std,
                  "clip_seconds": clip_seconds, "n_clips": len(clips), "n_videos": len(videos)}
        writer.commit({"clips": clips, "videos": videos}, record)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return FeatureStore(cfg.output_dir)

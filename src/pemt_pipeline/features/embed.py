"""Embed every real clip of the ingested videos with the model's visual and audio CNNs.

The CNNs are either randomly initialised from a fixed seed (the paper's prior: a random CNN already
tells similar clips from different ones, METHOD.md section 4) or loaded from a training checkpoint
(so the negative table can be refreshed after training). Clips stream shard by shard in batches of
`batch_size`; the store's arrays are memory-mapped, so memory does not grow with the dataset.

Several processes (`nproc_per_node` x `nnodes`, started by `pemt_pipeline.distributed.launch`, as
training's): each rank embeds a contiguous slice of the clips in manifest order (whole batches,
`clip_slices`: a video's clips may be shared by two neighbouring ranks) on its device
(cuda:<local rank>, or the CPU), rank 0 into the store being built and the others into memory-mapped
parts in a temporary folder beside it; after a barrier rank 0 copies the parts in and swaps the
store in: the same files and, batch for batch the same clips, the same values as one process. Across
machines the output folder and the shards must be on a filesystem every machine sees.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from pemt_pipeline.atomic import discard, temporary
from pemt_pipeline.configs import DEVICE, NON_EMPTY, above, at_least, from_params, optional, require
from pemt_pipeline.devices import torch_threads
from pemt_pipeline.distributed import LaunchSettings, RankContext, launch, rank_device
from pemt_pipeline.features.store import ARRAYS, ClipEmbeddings, EmbeddingWriter
from pemt_pipeline.features.transforms import VIDEO_MEAN, VIDEO_STD, audio_clips, center_crop_clips, normalize
from pemt_pipeline.media.shards import ShardReader, missing_shards
from pemt_pipeline.models import ModelConfig, PEMTModel, load_model, random_model

CLIP_COLUMNS = ("clip_id", "video_id", "clip_index", "clip_start", "label", "split")
COPY_ROWS = 1 << 16  # rows of a part copied into the store at a time
# Ranks wait at barriers for the slowest rank and for rank 0's assembly; a rank that dies is stopped
# (with the others) by the elastic agent, not by this timeout.
SYNC_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class EmbedConfig(LaunchSettings):
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
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = "localhost:0"
    backend: str = "auto"

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> EmbedConfig:
        return from_params(cls, params, "embedding")  # type checks, then validate()

    def validate(self) -> None:
        require("embedding", self, batch_size=at_least(1), crop=at_least(1), std=above(0), seed=at_least(0),
                checkpoint=optional(NON_EMPTY), device=DEVICE,
                decode_device=DEVICE, output_dir=NON_EMPTY)
        self.check_launch("embedding")


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


def _batches(manifest: pd.DataFrame, cfg: EmbedConfig, decode_device: torch.device, skip: int = 0,
             take: int | None = None):
    """Yield model inputs (video [n, 3, F, crop, crop], audio [n, 1, M, L]) of real clips in clip-table
    order, `batch_size` at a time (each video is cropped first: videos may differ in size): the real
    clips of `manifest`'s videos after the first `skip`, `take` of them (default all). Only the
    shard clips in use are decoded, on `decode_device` (JPEG shards batch-decode there: nvjpeg on a GPU)."""
    videos, audios, held = [], [], 0
    left = np.iinfo(np.int64).max if take is None else take
    for video in manifest.itertuples():
        if left <= 0:
            break
        reader = ShardReader(video.shard_path)
        shard = reader.read(("log_mel", "clip_mask"))
        real = np.flatnonzero(shard["clip_mask"])
        used = real[skip:skip + left]  # shard clip indices of the real clips embedded here
        skip, left = max(0, skip - len(real)), left - len(used)
        if not len(used):
            continue
        window = slice(int(used[0]), int(used[-1]) + 1)
        keep = torch.from_numpy(used - window.start).to(decode_device)
        frames = reader.frames_on(decode_device, window)[keep]  # uint8 [n, F, H, W, 3]
        videos.append(normalize(center_crop_clips(frames, cfg.crop), cfg.mean, cfg.std))  # [n, 3, F, crop, crop]
        audios.append(audio_clips(shard["log_mel"][used]).to(decode_device))
        held += len(used)
        while held >= cfg.batch_size:
            v, a = torch.cat(videos), torch.cat(audios)
            yield v[:cfg.batch_size], a[:cfg.batch_size]
            videos, audios, held = [v[cfg.batch_size:]], [a[cfg.batch_size:]], held - cfg.batch_size
    if held:
        yield torch.cat(videos), torch.cat(audios)


def clip_slices(n_clips: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges [start, stop) of the clips for `parts` ranks, as even as whole batches allow,
    cut at multiples of `batch_size`: each rank's batches then hold the same clips as one process's
    (CPU kernels' results depend on the batch's size, so the values match bit for bit)."""
    batches = -(-n_clips // batch_size)
    bounds = [min(n_clips, (r * batches // parts) * batch_size) for r in range(parts)] + [n_clips]
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class EmbedInputs:
    """What each embedding process gets (picklable: sent to the workers)."""

    manifest: pd.DataFrame
    clips: pd.DataFrame  # `clip_table(manifest)`
    model_cfg: ModelConfig
    cfg: EmbedConfig


def embed_clips(manifest: pd.DataFrame, model_cfg: ModelConfig, cfg: EmbedConfig,
                model: PEMTModel | None = None) -> ClipEmbeddings:
    """Embed every real clip listed by `manifest` (ingestion's) into the store at cfg.output_dir,
    in this process or in cfg.world_size processes (module docstring). `model`: the model whose CNNs
    embed, in this process whatever cfg's launch settings (eval mode, on cfg.device; training's
    negative refresh passes the model being trained); default cfg.checkpoint's, or a random one from
    cfg.seed."""
    if manifest.empty:
        raise ValueError("the manifest lists no video: run ingestion on a folder with usable videos first")
    missing = missing_shards(manifest["shard_path"])  # remote shards: one listing per folder
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) of the manifest are missing, e.g. {missing[0]!r}: "
                                "run the ingestion pipeline again")
    inputs = EmbedInputs(manifest.reset_index(drop=True), clip_table(manifest), model_cfg, cfg)
    if model is not None:
        embed_rank(inputs, RankContext(), model)
    else:
        launch(embed_rank, inputs, cfg)
    return ClipEmbeddings(cfg.output_dir)


def embed_rank(inputs: EmbedInputs, ctx: RankContext, model: PEMTModel | None = None) -> dict[str, Any]:
    """One process's share of `embed_clips`: its slice of the videos into the store (rank 0) or its
    part, then (rank 0) the parts copied in and the store swapped into place. Returns the store's meta."""
    cfg, clips = inputs.cfg, inputs.clips
    device = rank_device(cfg.device, ctx)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if model is None:
        model = random_model(inputs.model_cfg, cfg.seed) if cfg.checkpoint is None else load_model(
            cfg.checkpoint, inputs.model_cfg)
    model = model.to(device)
    dims = {"visual": model.visual_cnn.out_dim, "audio": model.audio_cnn.out_dim}
    counts = clips.groupby("video_id", sort=False).size().reindex(inputs.manifest["video_id"], fill_value=0)
    first = np.concatenate([[0], np.cumsum(counts.to_numpy())])  # first clip of each video
    slices = clip_slices(len(clips), cfg.batch_size, ctx.world_size)
    c0, c1 = slices[ctx.rank]
    v0 = int(np.searchsorted(first, c0, side="right")) - 1  # the video of clip c0, ...
    v1 = int(np.searchsorted(first, c1, side="left"))  # ... up to the one of clip c1 - 1
    meta = {"checkpoint": cfg.checkpoint, "seed": cfg.seed if cfg.checkpoint is None else None,
            "crop": cfg.crop, "mean": cfg.mean, "std": cfg.std, "model": model.cfg.to_dict(),
            "n_clips": len(clips), "n_videos": int(clips["video_id"].nunique()), "dims": dims}
    root = Path(cfg.output_dir).absolute()
    store = EmbeddingWriter(root, len(clips), dims) if ctx.main else None  # first: it clears stale temporaries
    sync = dist.new_group(backend="gloo", timeout=SYNC_TIMEOUT) if ctx.world_size > 1 else None
    parts = _parts_folder(root, ctx, sync)
    try:
        failure = None
        try:
            writer = store if ctx.main else EmbeddingWriter(parts / f"rank{ctx.rank}", c1 - c0, dims)
            desc = "embedding clips" + (f" (rank 0 of {ctx.world_size})" if ctx.world_size > 1 else "")
            with torch_threads(_cpu_threads(device, ctx)), torch.inference_mode():
                batches = _batches(inputs.manifest.iloc[v0:v1], cfg, rank_device(cfg.decode_device, ctx),
                                   skip=c0 - int(first[v0]), take=c1 - c0)
                _embed_into(writer, model, batches, device,
                            tqdm(total=c1 - c0, desc=desc, unit="clip", disable=not (cfg.progress and ctx.main)))
            if not ctx.main:
                writer.close(clips.iloc[c0:c1], {"rank": ctx.rank, "clips": [c0, c1]})
        except Exception as exc:
            if sync is None:
                raise
            failure = exc
        _all_done(failure, ctx, sync)
        if ctx.main:
            for rank in range(1, ctx.world_size):
                _copy_part(store, ClipEmbeddings(parts / f"rank{rank}"), slices[rank])
            store.close(clips, meta)
    except BaseException:
        if store is not None:
            store.abort()
        raise
    finally:
        if ctx.main and parts is not None:
            discard(parts)
    if sync is not None:
        dist.barrier(group=sync)  # the store is in place when any rank returns
    return meta


def _all_done(failure: Exception | None, ctx: RankContext, sync: Any) -> None:
    """A barrier that tells every rank whether another failed: this rank's own `failure` is raised,
    else an error naming the first rank that failed (so whichever rank the launcher reports names the
    cause). Nothing in one process."""
    if sync is None:
        return
    reports: list[str | None] = [None] * ctx.world_size
    own = None if failure is None else f"{type(failure).__name__}: {failure}"
    dist.all_gather_object(reports, own, group=sync)
    if failure is not None:
        raise failure
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if failed:
        rank, report = failed[0]
        raise RuntimeError(f"embedding failed in process {rank} of {ctx.world_size} ({len(failed)} failed): {report}")


def _parts_folder(root: Path, ctx: RankContext, sync: Any) -> Path | None:
    """The folder of the other ranks' parts: a temporary beside the store (removed by the next run
    if this one is killed), made by rank 0 and its path sent to every rank. None in one process."""
    if sync is None:
        return None
    path = [str(temporary(root, folder=True)) if ctx.main else None]
    dist.broadcast_object_list(path, src=0, group=sync)
    return Path(path[0])


def _cpu_threads(device: torch.device, ctx: RankContext) -> int | None:
    """Torch threads of a CPU rank: the machine's cores shared among its processes (unless
    OMP_NUM_THREADS says otherwise); None (unchanged) in one process or on a GPU."""
    if device.type != "cpu" or ctx.local_world_size == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // ctx.local_world_size)


def _embed_into(writer: EmbeddingWriter, model: PEMTModel, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                device: torch.device, bar: tqdm) -> None:
    """The `batches` (of `_batches`) through the CNNs on `device`, appended to `writer` one by one."""
    with bar:
        for video, audio in batches:
            video, audio = video.to(device, non_blocking=True), audio.to(device, non_blocking=True)
            writer.write({"visual": model.visual_cnn(video).float().cpu().numpy(),
                          "audio": model.audio_cnn(audio).float().cpu().numpy()})
            bar.update(len(video))


def _copy_part(store: EmbeddingWriter, part: ClipEmbeddings, clips: tuple[int, int]) -> None:
    """Append rank part `part` (clips [start, stop) of the store) to `store`, COPY_ROWS rows at a time."""
    start, stop = clips
    if store.written != start or len(part.clips) != stop - start:
        raise RuntimeError(f"embedding part {str(part.root)!r} holds {len(part.clips)} clips from {start}, "
                           f"expected {stop - start} after the {store.written} written")
    arrays = {name: part.array(name) for name in ARRAYS}
    for row in range(0, stop - start, COPY_ROWS):
        store.write({name: a[row:row + COPY_ROWS] for name, a in arrays.items()})

"""Pretraining objectives (METHOD.md section 3): Masked Embedding Prediction and Correct Pair
Prediction, and `PretrainingObjective`, which runs the model on a batch and sums them.

Streams and terms per fusion (`StreamOutput`s of `PEMTModel.contextualize`):
- early: mep_multimodal (multimodal_visual, multimodal_audio); cpp on the multimodal summaries
- mid:   mep_visual (visual), mep_audio (audio), mep_multimodal; cpp on the multimodal summaries
- late:  mep_visual, mep_audio; cpp on the visual and audio Transformers' summaries
mep_multimodal is the mean of the MEP losses at the multimodal stream's visual and audio tokens.

MEP negatives are in-batch: the true CNN embeddings of every real clip of the OTHER videos of the
batch (the batch sampler makes them content-aware). MEP targets are NOT detached: the CNNs learn
through the contrastive terms, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pemt_pipeline.configs import at_least, between, from_params, require
from pemt_pipeline.models import CPPHead, PEMTModel, cpp_summary
from pemt_pipeline.models.fusion import MODALITIES



@dataclass(frozen=True)
class LossConfig:
    """Masking ratio and the weights of the summed terms (weight 0: computed and logged only)."""

    mask_ratio: float = 0.15  # share of real clips replaced by [MASK] per stream (BERT: 15%)
    mep_visual: float = 1.0
    mep_audio: float = 1.0
    mep_multimodal: float = 1.0
    cpp: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Ranges; ValueError naming `training.loss.<key>`."""
        weight = at_least(0)
        require("training.loss", self, mask_ratio=between(0, 1, low_open=True, high_open=True), mep_visual=weight,
                mep_audio=weight, mep_multimodal=weight, cpp=weight)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LossConfig:
        """From the YAML `loss:` block; unknown keys raise a ValueError naming them."""
        return from_params(cls, d, "training.loss")


def _rand(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    # uniform [0, 1) from a CPU generator (None: the global CPU RNG), moved to `device`
    return torch.rand(shape, generator=generator).to(device)


def mask_positions(clip_mask: Tensor, ratio: float = 0.15,
                   generator: torch.Generator | None = None) -> Tensor:
    """BERT-style MEP mask: clip_mask [B, T] bool -> mep_mask [B, T] bool.

    Each real clip is masked independently with probability `ratio`; a video with >= 2 real clips
    and no clip drawn gets one uniformly chosen real clip masked (so every video gives a signal);
    a video with one real clip is masked with probability `ratio`; padding is never masked.
    """
    mep_mask = (_rand(clip_mask.shape, generator, clip_mask.device) < ratio) & clip_mask
    pick = _rand(clip_mask.shape, generator, clip_mask.device).masked_fill(~clip_mask, -1.0)
    forced = torch.zeros_like(clip_mask).scatter_(1, pick.argmax(1, keepdim=True), True)  # [B, T]
    needs = (clip_mask.sum(1) >= 2) & ~mep_mask.any(1)  # [B]
    return mep_mask | (forced & needs[:, None])


class MEPHead(nn.Module):
    """score(o, x) = f(o) W x^T, f = Linear(D, D) + GELU + LayerNorm, W [D, Dc] bilinear."""

    def __init__(self, d_model: int, d_target: int):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.LayerNorm(d_model))
        # std 1 / sqrt(D Dc): scores start O(1) for unit-scale f(o) and x
        self.w = nn.Parameter(torch.randn(d_model, d_target) * (d_model * d_target) ** -0.5)

    def score(self, o: Tensor, x: Tensor) -> Tensor:
        # o [N, D], x [M, Dc] -> [N, M]
        return self.f(o) @ self.w @ x.transpose(0, 1)


@dataclass
class CandidatePool:
    """The clips MEP compares against: this batch, or under DDP the global batch gathered from every
    rank (other ranks' rows without gradient, this rank's rows at `offset` with theirs)."""

    targets: Tensor  # [B', T, Dc]
    clip_mask: Tensor  # [B', T] bool
    video: Tensor  # [B', T] video id of each position
    offset: int  # row of this rank's first video


def gather_pool(targets: Tensor, clip_mask: Tensor, video: Tensor) -> CandidatePool:
    """Under torch.distributed with several ranks, the global batch's targets; else this batch's.
    Every rank holds the same number of videos (VideoBatchSampler slices the global batch evenly)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return CandidatePool(targets, clip_mask, video, 0)
    world, rank = dist.get_world_size(), dist.get_rank()

    def gather(x: Tensor) -> list[Tensor]:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.detach().contiguous())
        return parts

    parts = gather(targets)
    parts[rank] = targets  # keep this rank's gradient
    return CandidatePool(torch.cat(parts), torch.cat(gather(clip_mask)), torch.cat(gather(video)),
                         rank * targets.shape[0])


def mep_loss(head: MEPHead, outputs: Tensor, targets: Tensor, mep_mask: Tensor, clip_mask: Tensor,
             video_of_position: Tensor | None = None, pool: CandidatePool | None = None) -> tuple[Tensor, Tensor]:
    """InfoNCE at the masked positions -> (loss, top-1 accuracy), scalars.

    outputs [B, T, D] Transformer outputs, targets [B, T, Dc] CNN embeddings (not detached),
    mep_mask / clip_mask [B, T] bool. The candidates of a masked position are its own target and
    the targets of every real clip of another video; video_of_position [B] or [B, T] (default:
    the batch row) says which positions belong to the same video, so a video present twice in a
    batch never serves as its own negative. `pool` (default: this batch) widens the candidates to
    the global batch under DDP. Nothing masked: (0 with grad, 0).
    """
    B, T = clip_mask.shape
    video = video_of_position
    if video is None:
        video = torch.arange(B, device=clip_mask.device)
    video = video.view(B, -1).expand(B, T)  # [B, T]
    pool = pool or CandidatePool(targets, clip_mask, video, 0)
    mep_mask = mep_mask & clip_mask
    queries = outputs[mep_mask]  # [N, D]
    candidates = pool.targets[pool.clip_mask]  # [M, Dc]
    scores = head.score(queries, candidates)  # [N, M]
    if scores.shape[0] == 0:
        return scores.sum(), scores.new_zeros(())
    column = (pool.clip_mask.flatten().cumsum(0) - 1).view(pool.clip_mask.shape)  # [B', T]
    label = column[pool.offset:pool.offset + B][mep_mask]  # [N] own target's column
    same_video = video[mep_mask][:, None] == pool.video.view(pool.clip_mask.shape[0], -1).expand_as(
        pool.clip_mask)[pool.clip_mask][None, :]  # [N, M]
    own = torch.zeros_like(same_video).scatter_(1, label[:, None], True)
    scores = scores.masked_fill(same_video & ~own, float("-inf"))
    loss = F.cross_entropy(scores, label)
    top1 = (scores.argmax(1) == label).float().mean()
    return loss, top1.detach()


def cpp_pairs(batch_size: int, generator: torch.Generator | None = None
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Balanced CPP pairs: every video of the batch once with its own audio and (B >= 2) once with
    another member's -> (video_rows [P], audio_rows [P] int64, label [P] float32, 1 = matched),
    P = 2B (B for B = 1). The mismatched audio follows one random cycle through the batch (a
    derangement: every audio track is used once matched and once mismatched). Pairing every
    video both ways doubles CPP's examples per step for the price of one more pass of the
    Transformers (the CNN embeddings are shared)."""
    rows = torch.arange(batch_size)
    if batch_size < 2:
        return rows, rows.clone(), torch.ones(batch_size)
    order = torch.randperm(batch_size, generator=generator)
    other = torch.empty_like(rows)
    other[order] = order.roll(-1)  # video order[i] hears order[i + 1]
    label = torch.cat([torch.ones(batch_size), torch.zeros(batch_size)])
    return torch.cat([rows, rows]), torch.cat([rows, other]), label




def cpp_loss(head: CPPHead, summary: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """BCE-with-logits on summary [B, D_summary], labels [B] (1 = matched) -> (loss, accuracy)."""
    logits = head(summary)  # [B]
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    accuracy = ((logits > 0) == (labels > 0.5)).float().mean()
    return loss, accuracy.detach()




def stream_names(model: PEMTModel) -> tuple[str, ...]:
    """The StreamOutputs the model's fusion produces, in `contextualize` order."""
    names = tuple(m for m in MODALITIES if m in model.transformers)
    if "multimodal" in model.transformers:
        names += ("multimodal_visual", "multimodal_audio")
    return names


class PretrainingObjective(nn.Module):
    """MEP heads (one per stream of the fusion) + the CPP head; `forward` computes the loss."""

    def __init__(self, model: PEMTModel, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        d = model.cfg.transformer.hidden
        dims = {"visual": model.visual_cnn.out_dim, "audio": model.audio_cnn.out_dim}
        self.streams = stream_names(model)
        self.mep = nn.ModuleDict({s: MEPHead(d, dims[_modality(s)]) for s in self.streams})
        self.cpp = CPPHead(2 * d)

    def forward(self, model: PEMTModel, batch: dict[str, Tensor],
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """batch: `training.data` batch dict (video, audio, clip_mask, video_index used);
        generator: a CPU torch.Generator for the MEP masks and CPP pairs (None: global RNG); under
        DDP every rank must pass the same one.
        Returns (total loss with grad, logs): logs hold each term's loss ("mep_visual",
        "mep_audio", "mep_multimodal", "cpp" as the fusion has them), "<mep term>_top1"
        (mep_multimodal: the mean of its two streams'), "cpp_accuracy" and "total", as floats."""
        clip_mask = batch["clip_mask"]  # [B, T]
        v, a = model.embed_clips(batch["video"], batch["audio"], clip_mask)  # [B,T,Dv], [B,T,Da]
        targets = {"visual": v, "audio": a}
        video = batch.get("video_index")
        if video is None:
            video = torch.arange(clip_mask.shape[0], device=clip_mask.device)
        video = video.view(-1, 1).expand_as(clip_mask)  # [B, T]
        pools = {m: gather_pool(targets[m], clip_mask, video) for m in MODALITIES}
        # Masks are drawn for the global batch (the same generator on every rank) and sliced, so
        # N DDP processes mask exactly what one process would.
        rows = slice(pools["visual"].offset, pools["visual"].offset + clip_mask.shape[0])
        mep = {m: mask_positions(pools["visual"].clip_mask, self.cfg.mask_ratio, generator)[rows]
               for m in MODALITIES}
        streams = model.contextualize(v, a, clip_mask, clip_mask, mep["visual"], mep["audio"])
        per_stream = {
            s: mep_loss(self.mep[s], streams[s].clips, targets[_modality(s)], mep[_modality(s)],
                        clip_mask, video, pools[_modality(s)])
            for s in self.streams}
        terms = {f"mep_{m}": per_stream[m] for m in MODALITIES if m in per_stream}
        if "multimodal_visual" in per_stream:
            both = [per_stream["multimodal_visual"], per_stream["multimodal_audio"]]
            terms["mep_multimodal"] = tuple(torch.stack(x).mean() for x in zip(*both))  # loss, top1
        vi, ai, labels = (x.to(clip_mask.device) for x in cpp_pairs(clip_mask.shape[0], generator))
        pairs = model.contextualize(v[vi], a[ai], clip_mask[vi], clip_mask[ai])  # no MEP masking
        labels = labels.to(a.dtype)
        terms["cpp"] = cpp_loss(self.cpp, cpp_summary(pairs), labels)
        total = sum(getattr(self.cfg, name) * loss for name, (loss, _) in terms.items())
        logs = {}
        for name, (loss, accuracy) in terms.items():
            logs[name] = loss.detach()
            logs["cpp_accuracy" if name == "cpp" else f"{name}_top1"] = accuracy
        logs["total"] = total.detach()
        values = torch.stack(list(logs.values())).tolist()  # one device sync
        return total, dict(zip(logs, values))


def _modality(stream: str) -> str:
    # "multimodal_visual" -> "visual"
    return stream.rsplit("_", 1)[-1]

"""The audio-visual model: clip CNNs, tokens, and Transformers wired as early, mid or late fusion.

Streams (METHOD.md section 1):
- early: multimodal Transformer over [BOS_v, v_1..T, BOS_a, a_1..T]
- mid:   visual and audio Transformers, then the multimodal one over their concatenated outputs
- late:  visual and audio Transformers only
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils import parametrize

from .cnn import audio_resnet, visual_resnet
from .config import ModelConfig
from .dropout import Dropout
from .transformer import build_transformers, can_run_jointly, run_jointly

MODALITIES = ("visual", "audio")


@dataclass
class StreamOutput:
    """One modality's tokens at a Transformer's output."""

    summary: Tensor  # [B, D] output at the summary (BOS) token
    clips: Tensor  # [B, T, D] outputs at the clip tokens (undefined where mask is False)
    mask: Tensor  # [B, T] bool, True = real clip


@dataclass
class ModelOutput:
    clip_mask: Tensor  # [B, T] bool, True = real clip
    visual_embeddings: Tensor  # [B, T, Dv] CNN embedding per clip, pre-projection (0 at padding)
    audio_embeddings: Tensor  # [B, T, Da]
    visual: StreamOutput | None  # visual Transformer (mid, late)
    audio: StreamOutput | None  # audio Transformer (mid, late)
    multimodal_visual: StreamOutput | None  # multimodal Transformer, visual tokens (early, mid)
    multimodal_audio: StreamOutput | None  # multimodal Transformer, audio tokens (early, mid)


class StreamEmbedding(nn.Module):
    """Adds learned positions (restarting at 0 in each part) and, with several parts, token-type
    embeddings (part i has type i); then LayerNorm and dropout, as BERT's embeddings."""

    def __init__(self, cfg: ModelConfig, n_types: int):
        super().__init__()
        t = cfg.transformer
        self.position = nn.Parameter(torch.randn(cfg.max_clips + 1, t.hidden) * t.init_std)
        self.token_type = (nn.Parameter(torch.randn(n_types, t.hidden) * t.init_std)
                           if n_types > 1 else None)
        self.norm = nn.LayerNorm(t.hidden, t.layer_norm_eps)
        self.dropout = Dropout(t.dropout)

    def forward(self, parts: list[Tensor]) -> Tensor:
        # parts: [B, L_i, D] each, L_i <= max_clips + 1 -> [B, sum L_i, D]
        if max(p.shape[1] for p in parts) > len(self.position):
            raise ValueError(f"more than max_clips={len(self.position) - 1} clips")
        types = [0] * len(parts) if self.token_type is None else self.token_type
        x = torch.cat([p + self.position[: p.shape[1]] + types[i] for i, p in enumerate(parts)], 1)
        return self.dropout(self.norm(x))


class PEMTModel(nn.Module):
    """CNN clip encoders + (shared) Transformers. See `forward` for inputs and `ModelOutput`."""

    # Every child module of the model but `transformers`, in registration order (so a model built
    # from these parts lists its parameters in the same order): what a StreamModel takes over from
    # its base model (models/streams.py); tests/pruning/test_pruning_streams.py checks that they
    # cover the whole model.
    PARTS = ("visual_cnn", "audio_cnn", "projections", "bos", "mask_token", "embeddings")
    # Run the visual and audio Transformers depth by depth together where their layers allow it
    # (low-rank layers sharing U, or one shared layer: transformer.can_run_jointly), so every product
    # with a shared weight covers both modalities' tokens. False: one after the other, the order in
    # which their dropout masks used to be drawn (the values agree within float rounding otherwise).
    joint_streams = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        t = cfg.transformer
        d = t.hidden
        self.visual_cnn = visual_resnet(cfg.visual)
        self.audio_cnn = audio_resnet(cfg.audio)
        self.projections = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(cnn.out_dim, d), nn.LayerNorm(d, t.layer_norm_eps))
            for m, cnn in (("visual", self.visual_cnn), ("audio", self.audio_cnn))})
        for proj in self.projections.values():
            nn.init.normal_(proj[0].weight, std=t.init_std)
            nn.init.zeros_(proj[0].bias)
        # learned summary (BOS) and [MASK] embeddings per modality
        self.bos = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(d) * t.init_std) for m in MODALITIES})
        self.mask_token = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(d) * t.init_std) for m in MODALITIES})
        self.transformers = nn.ModuleDict(build_transformers(cfg))
        self.embeddings = nn.ModuleDict({
            name: StreamEmbedding(cfg, n_types=2 if name == "multimodal" else 1)
            for name in self.transformers})

    def embed_clips(self, video: Tensor, audio: Tensor,
                    clip_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-clip CNN embeddings. video [B, T, 3, F, H, W], audio [B, T, n_mels, frames],
        clip_mask [B, T] -> ([B, T, Dv], [B, T, Da]). Only real clips go through the CNNs
        (so BatchNorm statistics never see padding); padded positions are 0."""
        return (_per_clip(self.visual_cnn, video, clip_mask),
                _per_clip(self.audio_cnn, audio.unsqueeze(2), clip_mask))

    def contextualize(self, visual: Tensor, audio: Tensor, visual_mask: Tensor | None = None,
                      audio_mask: Tensor | None = None, visual_mep_mask: Tensor | None = None,
                      audio_mep_mask: Tensor | None = None) -> dict[str, StreamOutput]:
        """Transformers over clip embeddings visual [B, Tv, Dv], audio [B, Ta, Da].

        *_mask [B, T] bool: True = real clip (None: all real; audio_mask defaults to visual_mask).
        *_mep_mask [B, T] bool: True = replace that clip's token by the learned [MASK] embedding.
        Returns StreamOutputs keyed "visual", "audio", "multimodal_visual", "multimodal_audio"
        (those the fusion has).
        """
        audio_mask = visual_mask if audio_mask is None else audio_mask
        padded = visual_mask is not None or audio_mask is not None  # else: no attention mask
        masks = {"visual": _token_mask(visual, visual_mask),
                 "audio": _token_mask(audio, audio_mask)}  # [B, 1+T]
        tokens = {"visual": self._tokens("visual", visual, visual_mep_mask),
                  "audio": self._tokens("audio", audio, audio_mep_mask)}  # [B, 1+T, D]
        out: dict[str, StreamOutput] = {}
        with parametrize.cached():  # compute each orthogonal Sigma once per forward
            names = [m for m in MODALITIES if m in self.transformers]
            stacks = [self.transformers[m] for m in names]
            if self.joint_streams and can_run_jointly(stacks):
                xs = [self.embeddings[m]([tokens[m]]) for m in names]
                ys = run_jointly(stacks, xs, [masks[m] if padded else None for m in names])
                tokens.update(zip(names, ys))
            else:
                for m in names:
                    x = self.embeddings[m]([tokens[m]])
                    tokens[m] = self.transformers[m](x, masks[m] if padded else None)
            out.update({m: _stream(tokens[m], masks[m]) for m in names})
            if "multimodal" in self.transformers:
                mask = torch.cat([masks["visual"], masks["audio"]], dim=1)
                x = self.embeddings["multimodal"]([tokens["visual"], tokens["audio"]])
                x = self.transformers["multimodal"](x, mask if padded else None)
                n_v = tokens["visual"].shape[1]
                out["multimodal_visual"] = _stream(x[:, :n_v], masks["visual"])
                out["multimodal_audio"] = _stream(x[:, n_v:], masks["audio"])
        return out

    def forward(self, video: Tensor, audio: Tensor, clip_mask: Tensor | None = None,
                visual_mep_mask: Tensor | None = None,
                audio_mep_mask: Tensor | None = None) -> ModelOutput:
        """video [B, T, 3, F, H, W] (normalised), audio [B, T, n_mels, frames] (log-mel),
        clip_mask [B, T] bool (True = real clip), *_mep_mask [B, T] bool (clips to mask)."""
        v, a = self.embed_clips(video, audio, clip_mask)
        streams = self.contextualize(v, a, clip_mask, clip_mask, visual_mep_mask, audio_mep_mask)
        if clip_mask is None:
            clip_mask = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
        return ModelOutput(clip_mask, v, a, streams.get("visual"), streams.get("audio"),
                           streams.get("multimodal_visual"), streams.get("multimodal_audio"))

    def parameter_counts(self) -> dict[str, int]:
        """visual_cnn, audio_cnn, projections, embeddings (BOS, [MASK], positions, token types,
        their LayerNorms), transformer_<name> (every parameter that Transformer uses, shared ones
        included), transformers_shared (used by more than one Transformer), transformers
        (distinct), total. A tensor used in several places counts once."""
        counts = {
            "visual_cnn": numel(self.visual_cnn.parameters()),
            "audio_cnn": numel(self.audio_cnn.parameters()),
            "projections": numel(self.projections.parameters()),
            "embeddings": numel([*self.bos.values(), *self.mask_token.values(),
                                 *self.embeddings.parameters()]),
        }
        users = Counter()
        for name, transformer in self.transformers.items():
            params = {id(p): p for p in transformer.parameters()}
            counts[f"transformer_{name}"] = numel(params.values())
            users.update(params.keys())
        by_id = {id(p): p for p in self.transformers.parameters()}
        counts["transformers_shared"] = sum(by_id[i].numel() for i, n in users.items() if n > 1)
        counts["transformers"] = numel(by_id.values())
        counts["total"] = numel(self.parameters())
        parts = ("visual_cnn", "audio_cnn", "projections", "embeddings", "transformers")
        assert counts["total"] == sum(counts[k] for k in parts), "a parameter outside components"
        return counts

    def _tokens(self, modality: str, emb: Tensor, mep_mask: Tensor | None) -> Tensor:
        x = self.projections[modality](emb)  # [B, T, D]
        if mep_mask is not None:
            x = torch.where(mep_mask[..., None], self.mask_token[modality].to(x.dtype), x)
        bos = self.bos[modality].to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([bos, x], dim=1)


def numel(params: Iterable[Tensor]) -> int:
    """Number of scalars in distinct tensors."""
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def _per_clip(cnn: nn.Module, clips: Tensor, clip_mask: Tensor | None) -> Tensor:
    # clips [B, T, C, ...] -> [B, T, D]
    B, T = clips.shape[:2]
    if clip_mask is None:
        return cnn(clips.flatten(0, 1)).view(B, T, -1)
    feats = cnn(clips[clip_mask])  # [N_real, D]
    out = feats.new_zeros(B, T, feats.shape[-1])
    out[clip_mask] = feats
    return out


def _token_mask(emb: Tensor, mask: Tensor | None) -> Tensor:
    # [B, T] clip mask -> [B, 1+T] token mask, the summary token always real
    B, T = emb.shape[:2]
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=emb.device)
    return torch.cat([mask.new_ones(B, 1), mask], dim=1)


def _stream(x: Tensor, mask: Tensor) -> StreamOutput:
    return StreamOutput(summary=x[:, 0], clips=x[:, 1:], mask=mask[:, 1:])

"""PEMTModel variants that reuse another model's modules and swap in their own Transformers.

`StreamModel` takes the parts of a base model (`PEMTModel.PARTS`: every child but its
Transformers) by reference (so weights stay shared with the base: nothing is copied), keeps
PEMTModel's `embed_clips`, `contextualize` and `forward` (so the objective and the evaluation code
run unchanged), and tells the multimodal Transformer where its modality parts start (a temporal
convolution must not cross that boundary).

`plain_copy` gives a model whose orthogonal Sigmas are plain matrices (as an exported model holds
them): a fresh model of the same configuration, the source's state loaded, then torch's
`remove_parametrizations`. Fresh, not `copy.deepcopy`: torch injects one parametrised class per
module and a deep copy shares it with the original, so removing the parametrisation from a deep
copy would remove it from the original too.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils import parametrize

from .architecture import split_segments
from .config import ModelConfig
from .fusion import PEMTModel


class StreamTransformer(nn.Module):
    """A stack of layers called as layer(x, mask, attn_mask, segments); `segments` (the lengths of
    the parts a convolution must not cross) is set by the owning model before each forward."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.segments: tuple[int, ...] | None = None

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        # x [B, L, D]; mask [B, L] bool, True = real token (None: all real)
        attn_mask = None if mask is None else mask[:, None, None, :]
        segments = split_segments(x.shape[1], self.segments)
        for layer in self.layers:
            x = layer(x, mask, attn_mask, segments)
        return x


class StreamModel(PEMTModel):
    """`base`'s parts (`PEMTModel.PARTS`, shared) and configuration with `transformers` in place
    of its Transformers; in `base`'s training mode."""

    def __init__(self, base: PEMTModel, transformers: dict[str, nn.Module]):
        nn.Module.__init__(self)
        self.cfg: ModelConfig = base.cfg
        for name in PEMTModel.PARTS:
            setattr(self, name, getattr(base, name))
        self.transformers = nn.ModuleDict(transformers)
        self.train(base.training)

    def contextualize(self, visual: Tensor, audio: Tensor, *args, **kwargs):
        """PEMTModel.contextualize; the multimodal sequence is [BOS_v, v_1..Tv, BOS_a, a_1..Ta]."""
        if "multimodal" in self.transformers:
            self.transformers["multimodal"].segments = (1 + visual.shape[1], 1 + audio.shape[1])
        return super().contextualize(visual, audio, *args, **kwargs)


def plain_sigmas(module: nn.Module) -> nn.Module:
    """Every parametrised tensor of `module` (the orthogonal Sigmas) made a plain Parameter holding
    its current value, in place (torch's `remove_parametrizations(leave_parametrized=True)`).
    Only for modules that share no injected class with another: not for a `copy.deepcopy` of a
    parametrised module (that would strip the original too); `plain_copy` builds a fresh model."""
    for m in list(module.modules()):
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return module


def fresh_model(cfg: ModelConfig, source: nn.Module | None = None) -> PEMTModel:
    """A new PEMTModel of `cfg` with plain Sigmas: `source`'s weights (any module whose state-dict
    keys are those of a PEMTModel of `cfg`; copied, in its dtype, device and training mode), or
    fresh ones (None, to load a state dict into). The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):  # the initialisation draws, then is overwritten
        model = PEMTModel(cfg)
    if source is not None:
        like = next(source.parameters())
        model.to(device=like.device, dtype=like.dtype)
        model.load_state_dict(source.state_dict())
        model.train(source.training)
    return plain_sigmas(model)


def plain_copy(model: PEMTModel) -> PEMTModel:
    """A copy of a PEMTModel with every orthogonal Sigma a plain matrix (numerically the same
    model): what a model is timed as once deployed (no matrix_exp per forward)."""
    return fresh_model(model.cfg, model)


def segment_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, segments: tuple[int, ...],
                   groups: int = 1) -> Tensor:
    """x [B, L, C_in] -> [B, L, C_out]: conv1d (weight [C_out, C_in / groups, k], same length)
    over each segment on its own, zero-padded at the segment's ends."""
    pad = weight.shape[-1] // 2
    parts = x.split(list(segments), dim=1)
    return torch.cat([F.conv1d(p.transpose(1, 2), weight, bias, padding=pad, groups=groups)
                      .transpose(1, 2) for p in parts], dim=1)

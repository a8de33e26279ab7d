"""PEMTModel variants that reuse another model's modules and swap in their own Transformers.

`StreamModel` takes every module of a base model except its Transformers by reference (so weights
stay shared with the base: nothing is copied), keeps PEMTModel's `embed_clips`, `contextualize` and
`forward` (so the objective and the evaluation code run unchanged), and tells the multimodal
Transformer where its modality parts start (a temporal convolution must not cross that boundary).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils import parametrize

from pemt_pipeline.models import PEMTModel

from .architecture import split_segments


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
    """`base`'s modules (shared) with `transformers` in place of its Transformers."""

    def __init__(self, base: nn.Module, transformers: dict[str, StreamTransformer]):
        nn.Module.__init__(self)
        for name, value in vars(base).items():  # plain attributes (cfg)
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)
        for name, module in base._modules.items():
            if name != "transformers":
                self.add_module(name, module)
        for name, p in base._parameters.items():
            self.register_parameter(name, p)
        for name, b in base._buffers.items():
            self.register_buffer(name, b)
        self.transformers = nn.ModuleDict(transformers)
        self.train(base.training)

    def contextualize(self, visual: Tensor, audio: Tensor, *args, **kwargs):
        """PEMTModel.contextualize; the multimodal sequence is [BOS_v, v_1..Tv, BOS_a, a_1..Ta]."""
        if "multimodal" in self.transformers:
            self.transformers["multimodal"].segments = (1 + visual.shape[1], 1 + audio.shape[1])
        return super().contextualize(visual, audio, *args, **kwargs)


def plain_sigmas(module: nn.Module) -> nn.Module:
    """Replace every parametrised tensor (the orthogonal Sigma) by a plain Parameter holding its
    current value, in place. Done by hand: parametrize.remove_parametrizations deletes the property
    from the module's injected class, which a deepcopy shares with the original module."""
    for m in list(module.modules()):
        if parametrize.is_parametrized(m):
            with torch.no_grad():
                values = {name: getattr(m, name).clone() for name in m.parametrizations}
            del m._modules["parametrizations"]
            m.__class__ = m.__class__.__bases__[0]  # the class before parametrisation
            for name, value in values.items():
                m.register_parameter(name, nn.Parameter(value))
    return module

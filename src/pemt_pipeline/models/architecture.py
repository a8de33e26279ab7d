"""Architectures of a pruned model as plain dicts, and the token layout the convolutions follow.

An architecture maps each Transformer of the fusion to one entry per depth:
    {"visual": [{"op": "attention" | "conv3" | "conv1" | "skip", "ffn_units": int}, ...], ...}
`op` replaces the self-attention of that depth (conv3 / conv1: a temporal convolution built from
the attention's value and output projections; skip: no attention branch), `ffn_units` is how many
FFN hidden units are kept.
"""

from __future__ import annotations

from typing import Any

from .config import ModelConfig

OPS = ("attention", "conv3", "conv1", "skip")
KERNEL = {"conv3": 3, "conv1": 1}

Architecture = dict[str, list[dict[str, Any]]]


def full_architecture(cfg: ModelConfig) -> Architecture:
    """The unpruned model: attention and every FFN unit at every depth of every Transformer."""
    t = cfg.transformer
    return {name: [{"op": "attention", "ffn_units": t.ffn} for _ in range(t.n_layers)]
            for name in cfg.transformer_names}


def validate_architecture(cfg: ModelConfig, arch: Architecture) -> Architecture:
    """A clean copy of `arch` (ops checked, units as ints); a ValueError names what is wrong."""
    t, names = cfg.transformer, cfg.transformer_names
    if set(arch) != set(names):
        raise ValueError(f"architecture has Transformers {sorted(arch)}, the model {list(names)}")
    out = {}
    for name in names:
        depths = arch[name]
        if len(depths) != t.n_layers:
            raise ValueError(f"architecture[{name!r}] has {len(depths)} depths, the model "
                             f"{t.n_layers}")
        out[name] = []
        for d, entry in enumerate(depths):
            op, units = entry.get("op"), entry.get("ffn_units")
            if op not in OPS or set(entry) != {"op", "ffn_units"}:
                raise ValueError(f"architecture[{name!r}][{d}] = {entry!r}: expected keys op "
                                 f"(one of {OPS}) and ffn_units")
            if int(units) != units or not 0 <= units <= t.ffn:
                raise ValueError(f"architecture[{name!r}][{d}]: ffn_units {units} not in "
                                 f"[0, {t.ffn}]")
            out[name].append({"op": op, "ffn_units": int(units)})
    return out


def stream_lengths(cfg: ModelConfig, n_clips: int | None = None) -> dict[str, int]:
    """Tokens per sequence of each Transformer for videos of `n_clips` clips (None: max_clips):
    [BOS, clips] per modality, the multimodal Transformer both parts."""
    n = 1 + (cfg.max_clips if n_clips is None else n_clips)
    return {name: 2 * n if name == "multimodal" else n for name in cfg.transformer_names}


def split_segments(length: int, segments: tuple[int, ...] | None) -> tuple[int, ...]:
    """The contiguous parts a temporal convolution must not cross: the modality parts of the
    multimodal sequence ([BOS_v, v_1..T] then [BOS_a, a_1..T]); one part elsewhere."""
    if segments is None:
        return (length,)
    if sum(segments) != length:
        raise ValueError(f"segments {segments} do not add up to the sequence length {length}")
    return tuple(segments)

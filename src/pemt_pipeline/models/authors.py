"""Import the authors' AVBERT checkpoint (sangho-vision/avbert, `checkpoint.pyth`) into a PEMTModel.

The format is specified in ../shared/fixtures/avbert_small/README.md: a dict whose `state_dict`
holds `avbert.`-prefixed tensors; the three Transformers are one shared low-rank module stored
under four names. What the import does:
- CNNs, projections, summary (BOS) rows, position / token-type tables and LayerNorms are copied
  (the position tables' first max_clips + 1 rows);
- each factorised linear of group g takes V_g from `ms{g}_linear`, the shared U and bias from
  `s_linear`, and Sigma_g = B_g^T with B_g = base_g expm(triu(A_g, 1) - triu(A_g, 1)^T), computed in
  float64 and assigned through the orthogonal parametrisation (which then holds it as its base);
- the project's closing BatchNorm1d of each CNN becomes the identity (running variance 1 - eps);
- the [MASK] embeddings (not in the release) keep their initialisation.
Only known key patterns are read; every other key is reported as ignored, the `_B` caches only
checked against the recomputed B.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from pemt_pipeline.configs import at_least, from_params, require

from .config import RELEASED_CNN_OPTIONS, AudioCNNConfig, ModelConfig, VisualCNNConfig
from .files import random_model
from .fusion import PEMTModel

PREFIX = "avbert."
# the names the one shared Transformer is stored under (identical tensors)
TRANSFORMER_NAMES = ("transformer", "single_visual_transformer", "single_audio_transformer", "multi_transformer")
LAYER = "encoder.albert_layer_groups.0.albert_layers.0."
# the project's linears of a layer and the authors' names for them
LINEAR_NAMES = {"q": "attention.factor_query", "k": "attention.factor_key", "v": "attention.factor_value",
                "o": "attention.factor_dense", "fc1": "factor_ffn", "fc2": "factor_ffn_output"}
GROUPS = {"visual": 0, "audio": 1, "multimodal": 2}  # the authors' group index of each Transformer
EMBEDDING_NAMES = {"visual": "single_visual_embeddings", "audio": "single_audio_embeddings",
                   "multimodal": "multi_embeddings"}  # each Transformer's position table and LayerNorm
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class CheckpointFormatError(ValueError):
    """The file is not an authors' checkpoint, or it does not fit the model configuration."""


@dataclass
class AuthorsCheckpoint:
    """The tensors of an authors' checkpoint (prefixes stripped) and what else the file held."""

    tensors: dict[str, Tensor]
    source: str  # the file, for messages
    epoch: int | None = None
    other_top_level: list[str] = field(default_factory=list)  # top-level keys besides state_dict / epoch
    outside_prefix: list[str] = field(default_factory=list)  # state-dict keys without the avbert. prefix


def parse_checkpoint(obj: Any, source: str) -> AuthorsCheckpoint:
    """The loaded file (`torch.load(weights_only=True)`) -> AuthorsCheckpoint; a clear error on a
    file of another format. A leading `module.` (a DDP-wrapped save) is stripped."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else type(obj).__name__
        hint = (" (a pemt_pipeline model file: use it directly, e.g. --params model_file=...)"
                if isinstance(obj, Mapping) and "model_config" in obj else "")
        raise CheckpointFormatError(f"{source!r} is not an authors' AVBERT checkpoint: expected a dict with a "
                                    f"'state_dict' entry, found {what}{hint}")
    tensors, outside = {}, []
    for key, value in obj["state_dict"].items():
        name = key.removeprefix("module.")
        if not name.startswith(PREFIX):
            outside.append(key)
        elif isinstance(value, Tensor):
            tensors[name[len(PREFIX):]] = value
    if not tensors:
        raise CheckpointFormatError(f"{source!r} has a state_dict, but no '{PREFIX}' key: not an authors' AVBERT "
                                    f"checkpoint (first keys: {list(obj['state_dict'])[:5]})")
    epoch = obj.get("epoch")
    return AuthorsCheckpoint(tensors, source, int(epoch) if isinstance(epoch, int) else None,
                             sorted(str(k) for k in obj if k not in ("state_dict", "epoch")), outside)


# --------------------------------------------------------------------------- configuration


def _blocks(tensors: Mapping[str, Tensor], stage_prefix: str) -> int:
    found = {int(m.group(1)) for k in tensors if (m := re.match(re.escape(stage_prefix) + r"(\d+)\.", k))}
    return len(found)


def _shape(ckpt: AuthorsCheckpoint, key: str) -> tuple[int, ...]:
    if key not in ckpt.tensors:
        raise CheckpointFormatError(f"{ckpt.source!r} has no '{PREFIX}{key}': not the released AVBERT layout")
    return tuple(ckpt.tensors[key].shape)


def checkpoint_model_config(ckpt: AuthorsCheckpoint, base: ModelConfig,
                            authors_config: Mapping[str, Any] | None = None) -> tuple[ModelConfig, dict[str, str]]:
    """The model configuration of the checkpoint: sizes read from its tensor shapes, the released
    CNN options, depth / heads / dropout / audio strides from the authors' YAML config when given
    (else from `base`), everything else (max_clips, orthogonal map, init) from `base`.
    Returns (config, where each setting came from)."""
    t = ckpt.tensors
    a = authors_config or {}
    tr, aud = a.get("TRANSFORMER") or {}, a.get("AUDIO_RESNET") or {}
    stem_v = _shape(ckpt, "visual_conv.s1.pathway0_stem.conv.weight")  # [W, 3, k_t, 7, 7]
    stem_a = _shape(ckpt, "audio_conv.s1.stem.conv1.weight")  # [W, 1, k, 1]
    v_depths = tuple(_blocks(t, f"visual_conv.s{s}.pathway0_res") for s in range(2, 6))
    a_depths = tuple(_blocks(t, f"audio_conv.s{s}.res") for s in range(2, 6))
    if 0 in v_depths or 0 in a_depths:
        raise CheckpointFormatError(f"{ckpt.source!r}: a CNN stage has no blocks (visual {v_depths}, audio {a_depths})")
    released = RELEASED_CNN_OPTIONS  # the options the shapes do not show; stem kernel and stages they do
    visual = VisualCNNConfig(
        width=stem_v[0], depths=v_depths, in_channels=stem_v[1], stem_temporal_kernel=stem_v[2],
        stem_temporal_stride=released["visual"]["stem_temporal_stride"],
        temporal_kernels=tuple(_shape(ckpt, f"visual_conv.s{s}.pathway0_res0.branch2.a.weight")[2]
                               for s in range(2, 6)))
    audio = AudioCNNConfig(
        width=stem_a[0], depths=a_depths, stem_kernel=stem_a[2],
        separable_inner_norm=released["audio"]["separable_inner_norm"],
        strides=tuple(aud.get("STRIDES") or base.audio.strides),
        separable_stages=tuple(f"audio_conv.s{s}.res0.branch2.b1.weight" in t for s in range(2, 6)))
    groups = sorted({int(m.group(1)) for k in t if (m := re.search(r"\.ms(\d+)_linear\.weight$", k))})
    if groups != [0, 1, 2]:
        raise CheckpointFormatError(f"{ckpt.source!r} has factorised groups {groups}; the released model (mid "
                                    "fusion, low-rank sharing) has three: 0 visual, 1 audio, 2 multimodal")
    layer = _transformer_prefix(ckpt) + LAYER
    hidden = _shape(ckpt, "visual_fc.weight")[0]
    transformer = replace(
        base.transformer, hidden=hidden, ffn=_shape(ckpt, layer + "factor_ffn.s_linear.weight")[0],
        n_layers=int(tr.get("NUM_HIDDEN_LAYERS", base.transformer.n_layers)),
        n_heads=int(tr.get("NUM_ATTENTION_HEADS", base.transformer.n_heads)),
        dropout=float(tr.get("HIDDEN_DROPOUT_PROB", base.transformer.dropout)),
        attention_dropout=float(tr.get("ATTENTION_PROBS_DROPOUT_PROB", base.transformer.attention_dropout)),
        layer_norm_eps=1e-12)
    rows = min(_shape(ckpt, f"{n}.position_embeddings.weight")[0] for n in EMBEDDING_NAMES.values())
    rank = _shape(ckpt, layer + "attention.factor_query.ms0_linear.weight")[0]
    cfg = replace(base, visual=visual, audio=audio, transformer=transformer, fusion="mid", share_layers=True,
                  share_transformers="lowrank", rank=rank, max_clips=min(base.max_clips, rows - 1))
    cfg.validate()
    given = "the authors' config" if authors_config else "the model parameters"
    origin = {"cnn sizes, hidden, ffn, rank, fusion, sharing": "the checkpoint's tensor shapes",
              "stem_temporal_stride, stem_kernel, separable_inner_norm, separable_stages": "the released code",
              "n_layers, n_heads, dropout, audio strides": given,
              "max_clips": f"the model parameters, at most the checkpoint's {rows} position rows - 1",
              "orthogonal_map, init_std": "the model parameters"}
    return cfg, origin


def authors_config_sizes(authors_config: Mapping[str, Any]) -> dict[str, Any]:
    """What an authors' YAML config says about sizes the checkpoint shapes also give (for a cross-check)."""
    tr, res, aud = (authors_config.get(k) or {} for k in ("TRANSFORMER", "RESNET", "AUDIO_RESNET"))
    out = {"hidden": tr.get("HIDDEN_SIZE"), "ffn": tr.get("INTERMEDIATE_SIZE"), "rank": tr.get("ORTHOGONAL_SIZE"),
           "visual.width": res.get("WIDTH_PER_GROUP"), "audio.width": aud.get("WIDTH_PER_GROUP"),
           "visual.depths": DEPTHS.get(res.get("DEPTH")), "audio.depths": DEPTHS.get(aud.get("DEPTH"))}
    return {k: v for k, v in out.items() if v is not None}


def _config_sizes(cfg: ModelConfig) -> dict[str, Any]:
    return {"hidden": cfg.transformer.hidden, "ffn": cfg.transformer.ffn, "rank": cfg.rank,
            "visual.width": cfg.visual.width, "audio.width": cfg.audio.width,
            "visual.depths": cfg.visual.depths, "audio.depths": cfg.audio.depths}


# --------------------------------------------------------------------------- key mapping


def _transformer_prefix(ckpt: AuthorsCheckpoint) -> str:
    for name in TRANSFORMER_NAMES:
        if any(k.startswith(name + ".") for k in ckpt.tensors):
            return name + "."
    raise CheckpointFormatError(f"{ckpt.source!r} holds no Transformer (none of {TRANSFORMER_NAMES})")


def _module_pairs(cfg: ModelConfig) -> Iterator[tuple[str, str]]:
    """(project module, authors' module) for every conv, BatchNorm, linear and LayerNorm copied as is."""
    yield "visual_cnn.stem.0.0", "visual_conv.s1.pathway0_stem.conv"
    yield "visual_cnn.stem.0.1", "visual_conv.s1.pathway0_stem.bn"
    for i, depth in enumerate(cfg.visual.depths):
        for j in range(depth):
            ours, theirs = f"visual_cnn.stages.{i}.{j}.", f"visual_conv.s{i + 2}.pathway0_res{j}."
            for k, part in enumerate("abc"):
                yield f"{ours}branch.{k}.0", f"{theirs}branch2.{part}"
                yield f"{ours}branch.{k}.1", f"{theirs}branch2.{part}_bn"
            if j == 0:
                yield f"{ours}shortcut.0", f"{theirs}branch1"
                yield f"{ours}shortcut.1", f"{theirs}branch1_bn"
    for k, (conv, bn) in enumerate((("conv1", "bn1"), ("conv2", "bn2"))):
        yield f"audio_cnn.stem.{k}.0", f"audio_conv.s1.stem.{conv}"
        yield f"audio_cnn.stem.{k}.1", f"audio_conv.s1.stem.{bn}"
    for i, depth in enumerate(cfg.audio.depths):
        for j in range(depth):
            ours, theirs = f"audio_cnn.stages.{i}.{j}.", f"audio_conv.s{i + 2}.res{j}."
            middle = ([(f"branch.1.{h}.", f"b{h + 1}") for h in range(2)] if cfg.audio.separable_stages[i]
                      else [("branch.1.", "b")])
            for o, t in [("branch.0.", "a"), *middle, ("branch.2.", "c")]:
                yield f"{ours}{o}0", f"{theirs}branch2.{t}"
                yield f"{ours}{o}1", f"{theirs}branch2.{t}_bn"
            if j == 0:
                yield f"{ours}shortcut.0", f"{theirs}branch1"
                yield f"{ours}shortcut.1", f"{theirs}branch1_bn"
    for m in ("visual", "audio"):
        yield f"projections.{m}.0", f"{m}_fc"
        yield f"projections.{m}.1", f"{m}_norm"
    for name, theirs in EMBEDDING_NAMES.items():
        yield f"embeddings.{name}.norm", f"{theirs}.LayerNorm"


def _tensor_names(module: nn.Module) -> tuple[str, ...]:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return BN_KEYS
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        return ("weight",)
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        return ("weight", "bias")
    raise TypeError(f"no import rule for {type(module).__name__}")


class _Reader:
    """Takes tensors out of the checkpoint by name, recording what was used; errors name the key."""

    def __init__(self, ckpt: AuthorsCheckpoint):
        self.ckpt, self.used = ckpt, set()

    def get(self, key: str) -> Tensor:
        if key not in self.ckpt.tensors:
            raise CheckpointFormatError(f"{self.ckpt.source!r} has no '{PREFIX}{key}', which the model configuration "
                                        "needs: not the released AVBERT layout, or a different configuration")
        self.used.add(key)
        return self.ckpt.tensors[key]

    def copy(self, target: Tensor, key: str, what: str) -> None:
        value = self.get(key)
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointFormatError(f"{self.ckpt.source!r}: '{PREFIX}{key}' has shape {list(value.shape)}, the "
                                        f"model's {what} {list(target.shape)}: the model configuration differs")
        target.copy_(value)


def orthogonal_factor(a: Tensor, base: Tensor) -> Tensor:
    """B = base expm(triu(A, 1) - triu(A, 1)^T) in float64: the authors' orthogonal factor, which
    multiplies row vectors from the right (z B)."""
    upper = torch.triu(a.double(), 1)
    return base.double() @ torch.linalg.matrix_exp(upper - upper.T)


@torch.no_grad()
def import_checkpoint(ckpt: AuthorsCheckpoint, cfg: ModelConfig, dtype: torch.dtype = torch.float32,
                      seed: int = 0) -> tuple[PEMTModel, dict[str, Any]]:
    """The PEMTModel (eval mode, `dtype`) holding the checkpoint's weights, and a report: keys used,
    ignored (with shapes), the `_B` cache check, the Transformer copies' check, what was initialised."""
    model = random_model(cfg, seed).to(dtype)
    reader = _Reader(ckpt)
    for ours, theirs in _module_pairs(cfg):
        module = model.get_submodule(ours)
        for name in _tensor_names(module):
            reader.copy(getattr(module, name), f"{theirs}.{name}", f"{ours}.{name}")
    p = cfg.max_clips + 1
    for name, theirs in EMBEDDING_NAMES.items():
        table = reader.get(f"{theirs}.position_embeddings.weight")
        if table.shape[0] < p or table.shape[1] != cfg.transformer.hidden:
            raise CheckpointFormatError(f"{ckpt.source!r}: '{PREFIX}{theirs}.position_embeddings.weight' has shape "
                                        f"{list(table.shape)}; model.max_clips {cfg.max_clips} needs {p} rows of "
                                        f"{cfg.transformer.hidden}: lower model.max_clips")
        model.embeddings[name].position.copy_(table[:p])
    reader.copy(model.embeddings["multimodal"].token_type, "multi_embeddings.token_type_embeddings.weight",
                "multimodal token types")
    bos = reader.get("summary_encoding.bos_embeddings.weight")  # row 0 visual, row 1 audio
    for row, m in enumerate(("visual", "audio")):
        model.bos[m].copy_(_row(bos, row, cfg, ckpt.source))
    cache_error = _import_transformers(model, reader, cfg)
    for cnn in (model.visual_cnn, model.audio_cnn):  # the project's extra BatchNorm: the identity
        norm = cnn.out_norm
        norm.weight.fill_(1), norm.bias.zero_(), norm.running_mean.zero_(), norm.num_batches_tracked.zero_()
        norm.running_var.fill_(1 - norm.eps)
    ignored = sorted(set(ckpt.tensors) - reader.used)
    checked = [k for k in ignored if k.endswith("._B")]
    report = {
        "source": ckpt.source, "epoch": ckpt.epoch, "tensors": len(ckpt.tensors), "used": len(reader.used),
        "ignored": {PREFIX + k: list(ckpt.tensors[k].shape) for k in ignored if k not in checked},
        "ignored_outside_prefix": ckpt.outside_prefix, "ignored_top_level": ckpt.other_top_level,
        "orthogonal_cache_checked": len(checked), "orthogonal_cache_max_abs_diff": cache_error,
        "transformer_copies": [n for n in TRANSFORMER_NAMES if any(k.startswith(n + ".") for k in ckpt.tensors)],
        "initialised_not_in_checkpoint": ["mask_token.visual", "mask_token.audio"],
        "set_to_identity": ["visual_cnn.out_norm", "audio_cnn.out_norm"],
        "dtype": str(dtype).removeprefix("torch."),
    }
    return model.eval(), report


def _row(table: Tensor, row: int, cfg: ModelConfig, source: str) -> Tensor:
    if tuple(table.shape) != (2, cfg.transformer.hidden):
        raise CheckpointFormatError(f"{source!r}: '{PREFIX}summary_encoding.bos_embeddings.weight' has shape "
                                    f"{list(table.shape)}, expected [2, {cfg.transformer.hidden}]")
    return table[row]


def _import_transformers(model: PEMTModel, reader: _Reader, cfg: ModelConfig) -> float | None:
    """Copy the shared layer into every group; returns the largest |B - _B| over the caches present."""
    ckpt = reader.ckpt
    prefix = _transformer_prefix(ckpt)
    for name in TRANSFORMER_NAMES:  # the other copies must hold the same tensors; they count as used
        other = name + "."
        for key in [k for k in ckpt.tensors if k.startswith(other) and other != prefix]:
            mine = prefix + key[len(other):]
            if mine not in ckpt.tensors or not torch.equal(ckpt.tensors[key], ckpt.tensors[mine]):
                raise CheckpointFormatError(f"{ckpt.source!r}: '{PREFIX}{key}' differs from '{PREFIX}{mine}': the "
                                            "Transformers are not the one shared module the release stores")
            reader.used.add(key)
    layer_key = prefix + LAYER
    cache_error = None
    for name, group in GROUPS.items():
        layer = model.transformers[name].layers[0]  # the one layer of this group, applied at every depth
        for ours, theirs in LINEAR_NAMES.items():
            lin, key = getattr(layer, ours), f"{layer_key}{theirs}."
            reader.copy(lin.v.weight, f"{key}ms{group}_linear.weight", f"transformers.{name}.{ours}.v.weight")
            reader.copy(lin.u.weight, f"{key}s_linear.weight", f"transformers.{name}.{ours}.u.weight")
            reader.copy(lin.u.bias, f"{key}s_linear.bias", f"transformers.{name}.{ours}.u.bias")
            orth = f"{key}orthogonal_ms{group}_linear."
            b = orthogonal_factor(reader.get(orth + "A"), reader.get(orth + "base"))  # [O, O]
            if b.shape != lin.sigma.weight.shape:
                raise CheckpointFormatError(f"{ckpt.source!r}: '{PREFIX}{orth}A' is {list(b.shape)}, the model's "
                                            f"Sigma {list(lin.sigma.weight.shape)}: model.rank differs")
            lin.sigma.weight = b.T.to(lin.sigma.weight.dtype)  # Sigma = B^T (the parametrisation keeps it as base)
            if orth + "_B" in ckpt.tensors:
                diff = float((ckpt.tensors[orth + "_B"].double() - b).abs().max())
                cache_error = diff if cache_error is None else max(cache_error, diff)
        for ours, theirs in (("norm1", "attention.LayerNorm"), ("norm2", "full_layer_layer_norm")):
            for t in ("weight", "bias"):
                reader.copy(getattr(getattr(layer, ours), t), f"{layer_key}{theirs}.{t}",
                            f"transformers.{name}.{ours}.{t}")
    if cache_error is not None and cache_error > 1e-4:
        raise CheckpointFormatError(f"{ckpt.source!r}: the stored orthogonal caches (_B) differ from base expm(S) by "
                                    f"{cache_error:.2e}: the orthogonal factors are not what the format describes")
    return cache_error


def check_authors_config(cfg: ModelConfig, authors_config: Mapping[str, Any] | None, source: str) -> None:
    """The sizes an authors' YAML config states must be the checkpoint's."""
    if not authors_config:
        return
    stated, actual = authors_config_sizes(authors_config), _config_sizes(cfg)
    wrong = {k: (v, actual[k]) for k, v in stated.items()
             if (tuple(v) if isinstance(v, (list, tuple)) else v) != actual[k]}
    if wrong:
        detail = ", ".join(f"{k}: config {v}, checkpoint {a}" for k, (v, a) in wrong.items())
        raise CheckpointFormatError(f"the authors' config does not describe {source!r}: {detail}")


@dataclass
class ImportConfig:
    """The `import:` parameters. `path` (the authors' checkpoint.pyth) and `authors_config` (their
    YAML config, optional) are read by the catalog's `authors_checkpoint` dataset."""

    CATALOG_KEYS: ClassVar[tuple[str, ...]] = ("path", "authors_config")
    seed: int = 0  # initialises what the release does not hold (the [MASK] embeddings)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        require("import", self, seed=at_least(0))

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> ImportConfig:
        return from_params(cls, dict(params or {}), "import", ignore=cls.CATALOG_KEYS)


def import_authors(ckpt: AuthorsCheckpoint, authors_config: Mapping[str, Any] | None, base: ModelConfig,
                   cfg: ImportConfig = ImportConfig()) -> tuple[PEMTModel, dict[str, Any]]:
    """The checkpoint as a float32 PEMTModel (its configuration from the checkpoint, the authors'
    config and `base`, see `checkpoint_model_config`) and the import report (with the configuration,
    where each part came from, and the parameter counts)."""
    model_cfg, origin = checkpoint_model_config(ckpt, base, authors_config)
    check_authors_config(model_cfg, authors_config, ckpt.source)
    model, report = import_checkpoint(ckpt, model_cfg, torch.float32, cfg.seed)
    report.update(model_config=model_cfg.to_dict(), configuration_from=origin,
                  parameters=model.parameter_counts())
    return model, report


__all__ = ["AuthorsCheckpoint", "CheckpointFormatError", "ImportConfig", "checkpoint_model_config",
           "check_authors_config", "import_authors", "import_checkpoint", "orthogonal_factor", "parse_checkpoint"]

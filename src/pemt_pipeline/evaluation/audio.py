"""Audio-only downstream in the style of the paper's ESC-50 protocol (no Kedro).

A labelled folder of audio files (any container and codec FFmpeg reads: WAV, FLAC, MP3, OGG,
M4A...; a video file's audio track works too) is embedded with the model's audio branch and a
linear probe is trained on the train split and scored on the test split.

Labels CSV: one row per file with a file column (path relative to the folder), a label column, and
either a split column (``train`` / ``test``; values in `unused_splits`, e.g. ``val``, are dropped)
or a fold column with `train_folds` / `test_folds` (rows of other folds are dropped: UrbanSound8K,
ESC-50). A listed file that is not on disk is not an error: it is rejected (``missing_file``) when
featurised, like any unreadable file.

Per file (exactly the ingestion's audio front end, `media.audio`): decode the best audio stream
(`decode.decode_audio`), downmix to mono (channel mean), resample to `mel_cfg.sample_rate`, place
windows of `mel_cfg.span` seconds with `clips.plan_clips`, and compute their log-mel with
`clip_windows` + `log_mel`, so the audio CNN sees the [n_mels, mel_frames] clips it was trained on.
Time zero is the first decoded audio sample.

Windows per file (`clips_per_file`, N, default the model's `max_clips`), as the paper's ESC-50
protocol (N evenly spaced clips per recording, features averaged):
- ``short_file_policy: overlap`` (default): N windows evenly spaced from the start to the end of the
  file, overlapping when fewer than N fit (the ingestion's default for short videos);
- ``pad``: only the non-overlapping windows that fit (at most N), evenly spaced.
A file shorter than one window (`too_short: pad`, default) gets one window starting at 0 whose
end is zero-padded (silence, as the ingestion pads audio outside a track); it is counted as
``padded``. With `too_short: reject` it is rejected (``too_short``).

Feature streams (mean over a file's real windows, named as `evaluation.features`):
    audio_cnn   the audio CNN embedding of each window
    audio       the audio Transformer's outputs at the clip tokens (mid and late fusion only)
The audio Transformer sees the file's windows as the clip sequence of one video. It runs through
the public `PEMTModel.contextualize` with a one-clip dummy visual input: in mid and late fusion the
unimodal audio Transformer does not read the visual stream, so its outputs do not depend on it
(the multimodal stream does, and is therefore not offered).

Reject reasons (rows of the rejects table): those of the ingestion (`media.ingest`) that apply to
audio, i.e. missing_file, is_directory, unreadable, empty_file, not_media, no_audio_stream,
decode_error (opened, but no audio sample decoded), truncated (decoding stopped before
`min_decoded_fraction` of the declared duration), too_short (only with `too_short: reject`), and
internal_error (an unexpected error: the message says what; the other files go on).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from pemt_pipeline.configs import (DEVICE, NON_EMPTY, at_least, between, from_params, one_of, optional,
                                   require)
from pemt_pipeline.evaluation.features import masked_mean
from pemt_pipeline.evaluation.probe import ProbeConfig, linear_probe
from pemt_pipeline.devices import resolve_device
from pemt_pipeline.media import audio as A
from pemt_pipeline.media import clips as C
from pemt_pipeline.media.decode import MediaError, decode_audio
from pemt_pipeline.models import PEMTModel, random_model

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ("file", "path", "label", "split")
FILE_COLUMNS = ("file", "path", "label", "split", "duration_s", "n_windows", "padded", "overlapping",
                "codec", "source_rate", "channels")
REJECT_COLUMNS = ("file", "path", "label", "split", "reason", "detail")
SPLITS = ("train", "test")
SHORT_FILE_POLICIES = ("overlap", "pad")
TOO_SHORT_POLICIES = ("pad", "reject")


@dataclass(frozen=True)
class AudioFolderConfig:
    """How to read a labelled audio folder and embed it.

    Labels CSV columns:
        file_column     path of the file, relative to the folder (``\\`` and a leading ``./`` allowed)
        label_column    class label (read as text)
        split_column    ``train`` / ``test`` per row (case and surrounding spaces ignored); used
                        when fold_column is None
        unused_splits   split values whose rows are dropped (e.g. a validation split)
        fold_column     if set, the split comes from this column instead: rows whose fold is in
                        train_folds are train, in test_folds test, other folds are dropped
        train_folds, test_folds   folds (as written in the CSV, compared as text: 1 == "1")
    Windows:
        clips_per_file  N, windows per file (None: the model's max_clips, the most the audio
                        Transformer takes)
        placement       uniform | consecutive (as `clips.plan_clips`)
        short_file_policy   overlap | pad: a file where fewer than N windows fit (module docstring)
        too_short       pad | reject: a file shorter than one window
        min_decoded_fraction    decoding less than this share of the declared duration -> rejected
                        (truncated)
    Running:
        batch_size      files per forward pass (each with up to N windows)
        device          auto | cpu | cuda[:N]
        progress        tqdm progress bar over files
    """

    file_column: str = "file"
    label_column: str = "label"
    split_column: str = "split"
    unused_splits: tuple[str, ...] = ("val", "valid", "validation", "dev")
    fold_column: str | None = None
    train_folds: tuple = ()
    test_folds: tuple = ()
    clips_per_file: int | None = None
    placement: str = "uniform"
    short_file_policy: str = "overlap"
    too_short: str = "pad"
    min_decoded_fraction: float = 0.9
    batch_size: int = 32
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Choices, ranges and folds; ValueError naming `evaluation.audio.<key>`."""
        require("evaluation.audio", self, file_column=NON_EMPTY, label_column=NON_EMPTY,
                split_column=NON_EMPTY, fold_column=optional(NON_EMPTY), clips_per_file=optional(at_least(1)),
                placement=one_of(C.PLACEMENTS), short_file_policy=one_of(SHORT_FILE_POLICIES),
                too_short=one_of(TOO_SHORT_POLICIES), min_decoded_fraction=between(0, 1),
                batch_size=at_least(1), device=DEVICE)
        if self.fold_column is not None:
            train, test = self.fold_sets()
            if not train or not test:
                raise ValueError("evaluation.audio: with a fold_column, train_folds and test_folds "
                                 "must both list at least one fold")
            if train & test:
                raise ValueError(f"evaluation.audio: fold(s) {sorted(train & test)} are in both "
                                 "train_folds and test_folds")

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> AudioFolderConfig:
        """From a parameter dictionary (YAML lists become tuples; unknown keys raise)."""
        return from_params(cls, params, "audio_downstream")

    def fold_sets(self) -> tuple[set[str], set[str]]:
        return {_text(f) for f in self.train_folds}, {_text(f) for f in self.test_folds}


def _text(value) -> str:
    """A CSV cell or a configured fold as comparable text (1, 1.0, "1" and "1.0" are all "1")."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


# --------------------------------------------------------------------------- index


def index_audio_folder(root: str | Path, labels_csv: str | Path, cfg: AudioFolderConfig = AudioFolderConfig()
                       ) -> pd.DataFrame:
    """The labels CSV as a table file (as listed), path (absolute), label, split (train | test).

    Raises ValueError naming the CSV (and the file, for row errors) when the CSV cannot be read,
    lacks a configured column, lists a file twice, has a row without label or split/fold, or a
    split value that is neither train, test nor one of `unused_splits`. Files that do not exist are
    kept: `audio_clip_features` rejects them (missing_file) and goes on."""
    root, labels_csv = Path(root), Path(labels_csv)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {str(root)!r} does not exist or is not a folder")
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"labels CSV {str(labels_csv)!r} cannot be read: {exc}") from None
    split_col = cfg.fold_column if cfg.fold_column is not None else cfg.split_column
    needed = [cfg.file_column, cfg.label_column, split_col]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        what = "fold_column" if cfg.fold_column is not None else "split_column"
        raise ValueError(f"labels CSV {str(labels_csv)!r} lacks column(s) {missing} (file_column="
                         f"{cfg.file_column!r}, label_column={cfg.label_column!r}, {what}={split_col!r}); "
                         f"it has {list(table.columns)}")
    files = table[cfg.file_column]
    if files.isna().any():
        raise ValueError(f"labels CSV {str(labels_csv)!r}: row {int(files.isna().to_numpy().argmax()) + 2} "
                         f"has an empty {cfg.file_column!r}")
    files = files.str.strip().str.replace("\\", "/", regex=False).str.replace(r"^(\./)+", "", regex=True)
    duplicated = files[files.duplicated()]
    if len(duplicated):
        raise ValueError(f"labels CSV {str(labels_csv)!r} lists {duplicated.iloc[0]!r} more than once")
    for col in (cfg.label_column, split_col):
        empty = table[col].isna()
        if empty.any():
            raise ValueError(f"labels CSV {str(labels_csv)!r}: file {files[empty].iloc[0]!r} has no "
                             f"{col!r} ({int(empty.sum())} row(s) without one)")

    raw = table[split_col].map(_text)
    if cfg.fold_column is not None:
        train, test = cfg.fold_sets()
        split = raw.map(lambda f: "train" if f in train else "test" if f in test else None)
        if not (split == "train").any() or not (split == "test").any():
            raise ValueError(f"labels CSV {str(labels_csv)!r}: column {split_col!r} holds folds "
                             f"{sorted(set(raw))}; train_folds {sorted(train)} match "
                             f"{int((split == 'train').sum())} row(s), test_folds {sorted(test)} match "
                             f"{int((split == 'test').sum())}: both need rows")
    else:
        lowered = raw.str.lower()
        unused = {s.lower() for s in cfg.unused_splits}
        unknown = ~lowered.isin(SPLITS) & ~lowered.isin(unused)
        if unknown.any():
            raise ValueError(f"labels CSV {str(labels_csv)!r}: file {files[unknown].iloc[0]!r} has "
                             f"{split_col!r} = {raw[unknown].iloc[0]!r}; expected one of {list(SPLITS)} "
                             f"(or {sorted(unused)}, dropped); {int(unknown.sum())} such row(s)")
        split = lowered.where(lowered.isin(SPLITS), None)
    keep = split.notna().to_numpy()
    out = pd.DataFrame({
        "file": files.to_numpy(),
        "path": [str((root / f).resolve()) if not Path(f).is_absolute() else f for f in files],
        "label": table[cfg.label_column].str.strip().to_numpy(),
        "split": split.to_numpy(),
    }, columns=list(INDEX_COLUMNS))
    return out[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- decoding


def file_log_mel(path: str | Path, mel_cfg: A.MelConfig, n_windows: int, cfg: AudioFolderConfig
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """One file -> (log-mel of its real windows [n, n_mels, mel_frames], facts about it).
    Raises MediaError (a reject)."""
    decoded = decode_audio(path)
    duration = len(decoded.samples) / decoded.rate
    declared = decoded.declared_duration
    if declared and duration < cfg.min_decoded_fraction * declared:
        why = f" ({decoded.decode_error})" if decoded.decode_error else ""
        raise MediaError("truncated", f"decoded {duration:.2f} s of a declared {declared:.2f} s{why}")
    track = A.resample(decoded.samples, decoded.rate, mel_cfg.sample_rate)
    duration = len(track) / mel_cfg.sample_rate
    padded = duration + C.TIME_EPSILON < mel_cfg.span
    if padded:
        if cfg.too_short == "reject":
            raise MediaError("too_short", f"{duration:.3f} s long, shorter than one window ({mel_cfg.span:.3f} s)")
        starts, overlapping = np.zeros(1), False
    else:
        plan = C.plan_clips(duration, mel_cfg.span, n_windows, cfg.placement, cfg.short_file_policy)
        starts, overlapping = plan.starts[plan.mask], plan.overlapping
    mel = A.log_mel(A.clip_windows(track, starts, mel_cfg), mel_cfg)
    return mel, {"duration_s": round(duration, 6), "n_windows": len(starts), "padded": bool(padded),
                 "overlapping": bool(overlapping), "codec": decoded.codec, "source_rate": decoded.rate,
                 "channels": decoded.channels}


# --------------------------------------------------------------------------- features


def windows_per_file(model: PEMTModel, cfg: AudioFolderConfig) -> int:
    """N: cfg.clips_per_file, else the model's max_clips (checked against it when the model has an
    audio Transformer, whose positions hold at most max_clips clips)."""
    n = cfg.clips_per_file or model.cfg.max_clips
    if "audio" in model.transformers and n > model.cfg.max_clips:
        raise ValueError(f"clips_per_file={n} exceeds the model's max_clips={model.cfg.max_clips}: "
                         "its audio Transformer cannot take that many clips")
    return n


@torch.inference_mode()
def _embed_batch(model: PEMTModel, mels: list[np.ndarray], n: int, dev: torch.device) -> dict[str, Tensor]:
    """Pooled streams of a batch of files (log-mels [n_i, M, L], n_i <= n) -> {stream: [B, D]}."""
    B = len(mels)
    mask = torch.zeros(B, n, dtype=torch.bool)
    for i, m in enumerate(mels):
        mask[i, : len(m)] = True
    clips = torch.from_numpy(np.concatenate(mels)).to(dev).unsqueeze(1)  # [N_real, 1, M, L]
    emb = model.audio_cnn(clips)  # [N_real, Da]
    mask = mask.to(dev)
    a = emb.new_zeros(B, n, emb.shape[-1])
    a[mask] = emb
    out = {"audio_cnn": masked_mean(a, mask)}
    if "audio" in model.transformers:
        dummy = a.new_zeros(B, 1, model.visual_cnn.out_dim)  # not read by the audio Transformer
        streams = model.contextualize(dummy, a, torch.ones(B, 1, dtype=torch.bool, device=dev), mask)
        out["audio"] = masked_mean(streams["audio"].clips, mask)
    return {k: v.float().cpu() for k, v in out.items()}


def audio_clip_features(model: PEMTModel, index: pd.DataFrame, mel_cfg: A.MelConfig,
                        cfg: AudioFolderConfig = AudioFolderConfig()
                        ) -> tuple[dict[str, np.ndarray], pd.DataFrame, pd.DataFrame]:
    """Embed every file of `index` (from `index_audio_folder`) with the audio branch (eval mode).

    Returns (features, rejects, files):
        features  {stream: float32 [n_files, d]}, one row per featurised file, in `files` order
        rejects   file, path, label, split, reason, detail: files that could not be used
        files     the featurised rows of `index` (same order as features) plus duration_s (after
                  resampling), n_windows, padded, overlapping, codec, source_rate, channels
    Every row of `index` is in exactly one of files and rejects."""
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"the index lacks column(s) {missing}: build it with index_audio_folder")
    n = windows_per_file(model, cfg)
    dev = resolve_device(cfg.device)
    model = model.eval().to(dev)
    pooled: dict[str, list[Tensor]] = {}
    kept, rejects, pending = [], [], []

    def flush():
        for k, x in _embed_batch(model, [m for m, _ in pending], n, dev).items():
            pooled.setdefault(k, []).append(x)
        kept.extend(row for _, row in pending)
        pending.clear()

    for row in tqdm(index.to_dict("records"), desc="audio files", unit="file", disable=not cfg.progress):
        base = {k: row[k] for k in INDEX_COLUMNS}
        try:
            mel, facts = file_log_mel(row["path"], mel_cfg, n, cfg)
        except MediaError as exc:
            rejects.append({**base, "reason": exc.code, "detail": exc.detail})
            continue
        except Exception as exc:  # a bug or an unforeseen file: record it, go on with the others
            logger.warning("audio file %s: unexpected error\n%s", row["path"], traceback.format_exc())
            rejects.append({**base, "reason": "internal_error", "detail": f"{type(exc).__name__}: {exc}"})
            continue
        pending.append((mel, {**base, **facts}))
        if len(pending) == cfg.batch_size:
            flush()
    if pending:
        flush()
    if rejects:
        logger.info("audio files rejected: %s", pd.Series([r["reason"] for r in rejects]).value_counts().to_dict())
    files = pd.DataFrame(kept, columns=list(FILE_COLUMNS))
    features = {k: torch.cat(v).numpy() for k, v in pooled.items()}
    return features, pd.DataFrame(rejects, columns=list(REJECT_COLUMNS)), files


# --------------------------------------------------------------------------- probe


def audio_probe(model: PEMTModel, root: str | Path, labels_csv: str | Path, mel_cfg: A.MelConfig,
                cfg: AudioFolderConfig = AudioFolderConfig(), probe_cfg: ProbeConfig = ProbeConfig()
                ) -> dict[str, Any]:
    """Index the folder, embed it, and fit a linear probe per feature stream on the train split,
    scored on the test split. Returns a JSON-serialisable dict:

        streams   {stream: linear_probe metrics (top1, top5, per_class, confusion, chance_top1,
                  train_top1, n, n_train ...)}
        counts    listed (rows used by the splits), featurised, rejected, padded (shorter than one
                  window), overlapping, train / test (featurised), classes, rejected_by_reason
        rejects   [{file, label, split, reason, detail}]
        windows_per_file, mel (the front end), config (cfg)
    """
    index = index_audio_folder(root, labels_csv, cfg)
    features, rejects, files = audio_clip_features(model, index, mel_cfg, cfg)
    is_train = (files["split"] == "train").to_numpy()
    is_test = (files["split"] == "test").to_numpy()
    if not is_train.any() or not is_test.any():
        raise ValueError(f"after {len(rejects)} reject(s), {int(is_train.sum())} train and "
                         f"{int(is_test.sum())} test file(s) are left: a probe needs both "
                         f"(first rejects: {rejects[['file', 'reason']].head(3).to_dict('records')})")
    labels = files["label"].to_numpy(dtype=str)
    streams = {name: linear_probe(x[is_train], labels[is_train], x[is_test], labels[is_test], probe_cfg)
               for name, x in features.items()}
    counts = {
        "listed": len(index), "featurised": len(files), "rejected": len(rejects),
        "padded": int(files["padded"].sum()), "overlapping": int(files["overlapping"].sum()),
        "train": int(is_train.sum()), "test": int(is_test.sum()),
        "classes": int(len(np.unique(labels))),
        "rejected_by_reason": {str(k): int(v) for k, v in rejects["reason"].value_counts().items()},
    }
    return {
        "streams": streams,
        "counts": counts,
        "rejects": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                    for r in rejects.drop(columns="path").to_dict("records")],
        "windows_per_file": windows_per_file(model, cfg),
        "mel": dataclasses.asdict(mel_cfg),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()},
    }


def audio_downstream(model: PEMTModel, root: str | Path, labels_csv: str | Path | None, mel_cfg: A.MelConfig,
                     cfg: AudioFolderConfig, probe: ProbeConfig, baseline_seed: int) -> dict[str, Any]:
    """The audio probe of `model` and of its random initialisation (seed `baseline_seed`) on the
    labelled folder `root` (labels: `labels_csv`, default <root>/labels.csv)."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"evaluation.audio.root {str(root)!r} is not a folder: point it at a labelled "
                                "audio folder (e.g. --params evaluation.audio.root=/data/urbansound8k)")
    labels_csv = labels_csv or Path(root) / "labels.csv"
    baseline = random_model(model.cfg, baseline_seed)
    return {name: audio_probe(m, root, labels_csv, mel_cfg, cfg, probe)
            for name, m in (("pretrained", model), ("random_init", baseline))}


def audio_headline(audio: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of the audio downstream task (flat, for `dvc metrics`)."""
    out = {f"audio_probe_top1/{model}/{stream}": m["top1"]
           for model, r in audio.items() for stream, m in r["streams"].items()}
    out["audio_probe_files"] = audio["pretrained"]["counts"]["featurised"]
    out["audio_probe_rejected"] = audio["pretrained"]["counts"]["rejected"]
    return out

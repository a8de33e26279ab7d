"""Audio-only downstream in the style of the paper's ESC-50 protocol (no Kedro).

A labelled folder of audio files (any container and codec FFmpeg reads: WAV, FLAC, MP3, OGG,
M4A...; a video file's audio track works too) is embedded with the model's audio branch and a
linear probe is trained on the train split and scored on the test split.

Labels CSV (`layout: labels_csv`, default <root>/labels.csv): one row per file with a file column
(path relative to the folder), a label column, and either a split column (``train`` / ``test``; values
in `unused_splits`, e.g. ``val``, are dropped) or a fold column with `train_folds` / `test_folds` (rows
of other folds are dropped: UrbanSound8K). `layout: esc50` reads the ESC-50 release as it is:
<root>/meta/esc50.csv (columns filename, fold, target, category), files in <root>/audio/, label =
category, folds from ``fold`` (the column keys are then not read). A listed file that is not on disk
is not an error: it is rejected (``missing_file``) when featurised, like any unreadable file.

Protocols: `audio_probe` / `audio_downstream` fit the probe on the train split (or folds) and score
the test split, on per-file features; `audio_kfold` is the ESC-50 protocol, k-fold cross-validation
over the CSV's folds with the probe on single windows, scored per window (clip level) and per file
(window scores averaged).

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

Feature streams (per window, and their mean over a file's real windows, named as `evaluation.features`):
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
from pemt_pipeline.evaluation.probe import ProbeConfig, classification_metrics, fit_probe, linear_probe, probe_scores
from pemt_pipeline.devices import resolve_device
from pemt_pipeline.media import audio as A
from pemt_pipeline.media import clips as C
from pemt_pipeline.media.decode import MediaError, decode_audio
from pemt_pipeline.models import PEMTModel, random_model

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ("file", "path", "label", "split", "fold")
FILE_COLUMNS = (*INDEX_COLUMNS, "duration_s", "n_windows", "padded", "overlapping", "codec", "source_rate",
                "channels")
REJECT_COLUMNS = (*INDEX_COLUMNS, "reason", "detail")
SPLITS = ("train", "test")
LAYOUTS = ("labels_csv", "esc50")
# ESC-50 (github.com/karolpiczak/ESC-50): its metadata CSV, its audio folder and the columns read
ESC50_CSV = "meta/esc50.csv"
ESC50_AUDIO_DIR = "audio"
ESC50_COLUMNS = {"file_column": "filename", "label_column": "category", "fold_column": "fold"}
SHORT_FILE_POLICIES = ("overlap", "pad")
TOO_SHORT_POLICIES = ("pad", "reject")


@dataclass(frozen=True)
class AudioFolderConfig:
    """How to read a labelled audio folder and embed it.

    layout              labels_csv (the columns below) | esc50 (meta/esc50.csv, audio/, fold and
                        category columns: the column keys are not read; module docstring)
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

    layout: str = "labels_csv"
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
        require("evaluation.audio", self, layout=one_of(LAYOUTS), file_column=NON_EMPTY, label_column=NON_EMPTY,
                split_column=NON_EMPTY, fold_column=optional(NON_EMPTY), clips_per_file=optional(at_least(1)),
                placement=one_of(C.PLACEMENTS), short_file_policy=one_of(SHORT_FILE_POLICIES),
                too_short=one_of(TOO_SHORT_POLICIES), min_decoded_fraction=between(0, 1),
                batch_size=at_least(1), device=DEVICE)
        train, test = self.fold_sets()
        if train & test:
            raise ValueError(f"evaluation.audio: fold(s) {sorted(train & test)} are in both "
                             "train_folds and test_folds")

    def columns(self) -> tuple[str, str, str | None, str, str]:
        """(file, label, fold (None: none), split columns, folder of the files relative to the root)
        as the layout reads the CSV."""
        if self.layout == "esc50":
            return (ESC50_COLUMNS["file_column"], ESC50_COLUMNS["label_column"], ESC50_COLUMNS["fold_column"],
                    self.split_column, ESC50_AUDIO_DIR)
        return self.file_column, self.label_column, self.fold_column, self.split_column, ""

    def default_labels_csv(self, root: str | Path) -> Path:
        """The labels CSV read when none is given: <root>/labels.csv, or <root>/meta/esc50.csv."""
        return Path(root) / (ESC50_CSV if self.layout == "esc50" else "labels.csv")

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


def index_audio_folder(root: str | Path, labels_csv: str | Path | None = None,
                       cfg: AudioFolderConfig = AudioFolderConfig(), every_fold: bool = False) -> pd.DataFrame:
    """The labels CSV (None: `cfg.default_labels_csv`) as a table file (as listed, under the layout's
    audio folder), path (absolute), label, split (train | test), fold (as text; None without a fold
    column). With `every_fold` (k-fold cross-validation; needs a fold column) every row is kept and
    split is None.

    Raises ValueError naming the CSV (and the file, for row errors) when the CSV cannot be read,
    lacks a configured column, lists a file twice, has a row without label or split/fold, or a
    split value that is neither train, test nor one of `unused_splits`. Files that do not exist are
    kept: `audio_clip_features` rejects them (missing_file) and goes on."""
    root = Path(root)
    labels_csv = Path(labels_csv) if labels_csv is not None else cfg.default_labels_csv(root)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {str(root)!r} does not exist or is not a folder")
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"labels CSV {str(labels_csv)!r} cannot be read: {exc}") from None
    file_col, label_col, fold_col, split_col, audio_dir = cfg.columns()
    if every_fold and fold_col is None:
        raise ValueError("k-fold cross-validation needs a fold column: set evaluation.audio.fold_column "
                         "(or layout: esc50)")
    split_col = fold_col if fold_col is not None else split_col
    needed = [file_col, label_col, split_col]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        what = "fold_column" if fold_col is not None else "split_column"
        raise ValueError(f"labels CSV {str(labels_csv)!r} lacks column(s) {missing} (layout={cfg.layout!r}, "
                         f"file_column={file_col!r}, label_column={label_col!r}, {what}={split_col!r}); "
                         f"it has {list(table.columns)}")
    files = table[file_col]
    if files.isna().any():
        raise ValueError(f"labels CSV {str(labels_csv)!r}: row {int(files.isna().to_numpy().argmax()) + 2} "
                         f"has an empty {file_col!r}")
    files = files.str.strip().str.replace("\\", "/", regex=False).str.replace(r"^(\./)+", "", regex=True)
    if audio_dir:
        files = audio_dir + "/" + files
    duplicated = files[files.duplicated()]
    if len(duplicated):
        raise ValueError(f"labels CSV {str(labels_csv)!r} lists {duplicated.iloc[0]!r} more than once")
    for col in (label_col, split_col):
        empty = table[col].isna()
        if empty.any():
            raise ValueError(f"labels CSV {str(labels_csv)!r}: file {files[empty].iloc[0]!r} has no "
                             f"{col!r} ({int(empty.sum())} row(s) without one)")

    raw = table[split_col].map(_text)
    if every_fold:
        split = pd.Series(None, index=table.index, dtype=object)
    elif fold_col is not None:
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
    keep = split.notna().to_numpy() | every_fold
    out = pd.DataFrame({
        "file": files.to_numpy(),
        "path": [str((root / f).resolve()) if not Path(f).is_absolute() else f for f in files],
        "label": table[label_col].str.strip().to_numpy(),
        "split": split.to_numpy(),
        "fold": raw.to_numpy() if fold_col is not None else None,
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
def _embed_batch(model: PEMTModel, mels: list[np.ndarray], n: int, dev: torch.device
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Streams of a batch of files (log-mels [n_i, M, L], n_i <= n) -> pooled {stream: [B, D]} and
    per window {stream: [sum n_i, D]} (file by file, windows in order)."""
    B = len(mels)
    mask = torch.zeros(B, n, dtype=torch.bool)
    for i, m in enumerate(mels):
        mask[i, : len(m)] = True
    clips = torch.from_numpy(np.concatenate(mels)).to(dev).unsqueeze(1)  # [N_real, 1, M, L]
    emb = model.audio_cnn(clips)  # [N_real, Da]
    mask = mask.to(dev)
    a = emb.new_zeros(B, n, emb.shape[-1])
    a[mask] = emb
    out, windows = {"audio_cnn": masked_mean(a, mask)}, {"audio_cnn": emb}
    if "audio" in model.transformers:
        dummy = a.new_zeros(B, 1, model.visual_cnn.out_dim)  # not read by the audio Transformer
        streams = model.contextualize(dummy, a, torch.ones(B, 1, dtype=torch.bool, device=dev), mask)
        out["audio"] = masked_mean(streams["audio"].clips, mask)
        windows["audio"] = streams["audio"].clips[mask]  # [N_real, D]
    return {k: v.float().cpu() for k, v in out.items()}, {k: v.float().cpu() for k, v in windows.items()}


def audio_clip_features(model: PEMTModel, index: pd.DataFrame, mel_cfg: A.MelConfig,
                        cfg: AudioFolderConfig = AudioFolderConfig()
                        ) -> tuple[dict[str, np.ndarray], pd.DataFrame, pd.DataFrame]:
    """Embed every file of `index` (from `index_audio_folder`) with the audio branch (eval mode).

    Returns (features, rejects, files):
        features  {stream: float32 [n_files, d]}, one row per featurised file, in `files` order
        rejects   file, path, label, split, fold, reason, detail: files that could not be used
        files     the featurised rows of `index` (same order as features) plus duration_s (after
                  resampling), n_windows, padded, overlapping, codec, source_rate, channels
    Every row of `index` is in exactly one of files and rejects."""
    features, _, rejects, files = audio_window_features(model, index, mel_cfg, cfg)
    return features, rejects, files


def audio_window_features(model: PEMTModel, index: pd.DataFrame, mel_cfg: A.MelConfig,
                          cfg: AudioFolderConfig = AudioFolderConfig()
                          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], pd.DataFrame, pd.DataFrame]:
    """`audio_clip_features` plus the features of every window: (features, windows, rejects, files)
    with windows {stream: float32 [sum of files["n_windows"], d]}, file by file in `files` order."""
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"the index lacks column(s) {missing}: build it with index_audio_folder")
    n = windows_per_file(model, cfg)
    dev = resolve_device(cfg.device)
    model = model.eval().to(dev)
    pooled: dict[str, list[Tensor]] = {}
    per_window: dict[str, list[Tensor]] = {}
    kept, rejects, pending = [], [], []

    def flush():
        batch_pooled, batch_windows = _embed_batch(model, [m for m, _ in pending], n, dev)
        for k, x in batch_pooled.items():
            pooled.setdefault(k, []).append(x)
        for k, x in batch_windows.items():
            per_window.setdefault(k, []).append(x)
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
    windows = {k: torch.cat(v).numpy() for k, v in per_window.items()}
    return features, windows, pd.DataFrame(rejects, columns=list(REJECT_COLUMNS)), files


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
    facts = _folder_facts(model, index, rejects, files, mel_cfg, cfg)
    facts["counts"].update(train=int(is_train.sum()), test=int(is_test.sum()))
    return {"streams": streams, **facts}


def _folder_facts(model: PEMTModel, index: pd.DataFrame, rejects: pd.DataFrame, files: pd.DataFrame,
                  mel_cfg: A.MelConfig, cfg: AudioFolderConfig) -> dict[str, Any]:
    """counts, rejects, windows_per_file, mel and config of an embedded folder (JSON-serialisable)."""
    counts = {
        "listed": len(index), "featurised": len(files), "rejected": len(rejects),
        "padded": int(files["padded"].sum()), "overlapping": int(files["overlapping"].sum()),
        "classes": int(files["label"].nunique()),
        "rejected_by_reason": {str(k): int(v) for k, v in rejects["reason"].value_counts().items()},
    }
    return {
        "counts": counts,
        "rejects": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                    for r in rejects.drop(columns="path").to_dict("records")],
        "windows_per_file": windows_per_file(model, cfg),
        "mel": dataclasses.asdict(mel_cfg),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()},
    }


def _check_root(root: str | Path) -> None:
    if not Path(root).is_dir():
        raise FileNotFoundError(f"evaluation.audio.root {str(root)!r} is not a folder: point it at a labelled "
                                "audio folder (e.g. --params evaluation.audio.root=/data/urbansound8k)")


def audio_downstream(model: PEMTModel, root: str | Path, labels_csv: str | Path | None, mel_cfg: A.MelConfig,
                     cfg: AudioFolderConfig, probe: ProbeConfig, baseline_seed: int) -> dict[str, Any]:
    """The audio probe of `model` and of its random initialisation (seed `baseline_seed`) on the
    labelled folder `root` (labels: `labels_csv`, default `cfg.default_labels_csv`: <root>/labels.csv,
    or <root>/meta/esc50.csv with layout esc50)."""
    _check_root(root)
    labels_csv = labels_csv or cfg.default_labels_csv(root)
    baseline = random_model(model.cfg, baseline_seed)
    return {name: audio_probe(m, root, labels_csv, mel_cfg, cfg, probe)
            for name, m in (("pretrained", model), ("random_init", baseline))}


# --------------------------------------------------------------------------- k-fold cross-validation


def _fold_order(folds) -> list[str]:
    """Fold names in order: numbers numerically, then the others by name."""
    def key(fold: str):
        try:
            return (0, float(fold), fold)
        except ValueError:
            return (1, 0.0, fold)
    return sorted(set(folds), key=key)


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of scores [n, C] (-inf: probability 0)."""
    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _fold_scores(windows: np.ndarray, window_labels: np.ndarray, train: np.ndarray, test: np.ndarray,
                 classes: np.ndarray, probe_cfg: ProbeConfig) -> tuple[np.ndarray, float]:
    """Fit the probe on the train windows, score the test windows -> (scores [n_test, C] over all
    `classes`, -inf for a class absent from the training folds; train top-1)."""
    probe = fit_probe(windows[train], window_labels[train], probe_cfg)
    scores = np.full((int(test.sum()), len(classes)), -np.inf)
    scores[:, np.searchsorted(classes, probe["classes"])] = probe_scores(probe, windows[test])
    train_top1 = classification_metrics(probe_scores(probe, windows[train]), window_labels[train],
                                        probe["classes"], 1)["top1"]
    return scores, train_top1


def _mean_per_file(values: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `values` [n, C] averaged per owner (file index) -> (owners in order, [n_owners, C])."""
    owners, inverse, counts = np.unique(owner, return_inverse=True, return_counts=True)
    sums = np.zeros((len(owners), values.shape[1]))
    np.add.at(sums, inverse, values)
    return owners, sums / counts[:, None]


def _level_summary(per_fold: list[dict[str, Any]], pooled: dict[str, Any]) -> dict[str, Any]:
    """Mean and std over folds of top-1 / top-k, plus the pooled per-class accuracy and confusion."""
    k = pooled["top_k"]
    out: dict[str, Any] = {}
    for metric in ("top1", f"top{k}"):
        values = np.array([m[metric] for m in per_fold])
        out[metric] = float(values.mean())
        out[f"{metric}_std"] = float(values.std(ddof=1))
        out[f"per_fold_{metric}"] = values.tolist()
    out.update(top_k=k, n=pooled["n"], pooled_top1=pooled["top1"], chance_top1=pooled["chance_top1"],
               per_class=pooled["per_class"], classes=pooled["classes"], confusion=pooled["confusion"])
    return out


def kfold_stream(windows: np.ndarray, files: pd.DataFrame, folds: list[str], probe_cfg: ProbeConfig = ProbeConfig()
                 ) -> dict[str, Any]:
    """k-fold linear probe of one stream: window features [sum n_windows, d] of `files` (file by file,
    as `audio_window_features` returns them; columns label, fold, n_windows). For each fold f, a probe
    fitted on the windows of the other folds scores the windows of f (clip level) and their softmax
    probabilities averaged per file (file level). Returns {clip: level, file: level, per_fold: [...]},
    see `audio_kfold`."""
    labels = files["label"].to_numpy(dtype=str)
    file_folds = files["fold"].to_numpy(dtype=str)
    owner = np.repeat(np.arange(len(files)), files["n_windows"].to_numpy())  # file of each window
    window_labels, window_folds = labels[owner], file_folds[owner]
    classes = np.unique(labels)
    per_fold, scored = [], {"clip": ([], []), "file": ([], [])}
    for fold in folds:
        train, test = window_folds != fold, window_folds == fold
        if not test.any() or not train.any():
            raise ValueError(f"fold {fold}: {int(test.sum())} test and {int(train.sum())} train window(s) left "
                             "after the rejects: every fold needs both")
        clip_scores, train_top1 = _fold_scores(windows, window_labels, train, test, classes, probe_cfg)
        test_files, file_scores = _mean_per_file(_softmax(clip_scores), owner[test])
        entry = {"fold": fold, "n_train": int(train.sum()), "n_train_files": int((file_folds != fold).sum()),
                 "train_top1": train_top1}
        for level, scores, y in (("clip", clip_scores, window_labels[test]), ("file", file_scores, labels[test_files])):
            m = classification_metrics(scores, y, classes, probe_cfg.top_k)
            entry[level] = {key: m[key] for key in ("n", "top1", f"top{m['top_k']}", "chance_top1")}
            scored[level][0].append(scores)
            scored[level][1].append(y)
        per_fold.append(entry)
    out = {level: _level_summary([f[level] for f in per_fold],
                                 classification_metrics(np.concatenate(s), np.concatenate(y), classes, probe_cfg.top_k))
           for level, (s, y) in scored.items()}
    return {**out, "per_fold": per_fold}


def audio_kfold(model: PEMTModel, root: str | Path, labels_csv: str | Path | None, mel_cfg: A.MelConfig,
                cfg: AudioFolderConfig = AudioFolderConfig(), probe_cfg: ProbeConfig = ProbeConfig(),
                baseline_seed: int | None = 0, folds: tuple | list | None = None) -> dict[str, Any]:
    """The ESC-50 protocol (METHOD.md section 5): linear evaluation of the audio branch with k-fold
    cross-validation over the labels CSV's folds (`cfg.fold_column`, or layout esc50: 5 folds).

    The folder is embedded once per model (`audio_window_features`); then for each fold f a linear
    probe (`probe_cfg`) is fitted on the single windows of the other folds and scores the windows of
    f: clip level = each window alone, file ("video") level = the softmax probabilities of a file's
    windows averaged. The same runs for the model's random initialisation (seed `baseline_seed`;
    None: no baseline). `folds`: the folds to use (None: every fold in the CSV; rows of other folds are
    dropped); at least 2.

    Returns a JSON-serialisable dict:
        protocol  "audio_linear_kfold"
        folds     the folds, as text, in order
        models    {"pretrained" | "random_init": {stream ("audio_cnn", "audio"): {
                      "clip" | "file": {top1, top1_std, top5, top5_std (mean and sample std over folds;
                          "top5" is top-k with k = min(probe top_k, classes), see top_k),
                          per_fold_top1, per_fold_top5, top_k, n (scored windows / files over all folds),
                          pooled_top1 (top-1 over all folds' predictions together), chance_top1,
                          classes, per_class (pooled accuracy per class), confusion (summed over folds;
                          rows true, columns predicted, in `classes` order)},
                      "per_fold": [{fold, n_train (windows), n_train_files, train_top1 (clip level),
                          clip: {n, top1, top5, chance_top1}, file: {...}}]}}}
        counts    listed, featurised, rejected, padded, overlapping, classes, rejected_by_reason, and
                  per_fold {fold: featurised files}
        rejects   [{file, label, split, fold, reason, detail}]
        windows_per_file, mel, config (cfg), probe (probe_cfg)
    """
    _check_root(root)
    index = index_audio_folder(root, labels_csv, cfg, every_fold=True)
    present = _fold_order(index["fold"])
    folds = present if folds is None else [_text(f) for f in folds]
    unknown = sorted(set(folds) - set(present))
    if unknown or len(set(folds)) < 2:
        raise ValueError(f"k-fold cross-validation needs at least 2 folds of the labels CSV, got {folds} "
                         f"(the CSV holds folds {present}{f'; not in it: {unknown}' if unknown else ''})")
    index = index[index["fold"].isin(folds)].reset_index(drop=True)
    models = {"pretrained": model}
    if baseline_seed is not None:
        models["random_init"] = random_model(model.cfg, baseline_seed)
    results, facts = {}, None
    for name, m in models.items():
        _, windows, rejects, files = audio_window_features(m, index, mel_cfg, cfg)
        results[name] = {stream: kfold_stream(x, files, folds, probe_cfg) for stream, x in windows.items()}
        facts = facts or _folder_facts(m, index, rejects, files, mel_cfg, cfg)
        facts["counts"]["per_fold"] = {f: int((files["fold"] == f).sum()) for f in folds}
    return {"protocol": "audio_linear_kfold", "folds": folds, "models": results, **facts,
            "probe": dataclasses.asdict(probe_cfg)}


def audio_headline(audio: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of the audio downstream task (flat, for `dvc metrics`)."""
    out = {f"audio_probe_top1/{model}/{stream}": m["top1"]
           for model, r in audio.items() for stream, m in r["streams"].items()}
    out["audio_probe_files"] = audio["pretrained"]["counts"]["featurised"]
    out["audio_probe_rejected"] = audio["pretrained"]["counts"]["rejected"]
    return out


def kfold_headline(kfold: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of `audio_kfold` (flat, for `dvc metrics`): mean top-1 per model, stream
    and level."""
    return {f"audio_kfold_top1/{model}/{stream}/{level}": r[level]["top1"]
            for model, streams in kfold["models"].items() for stream, r in streams.items()
            for level in ("clip", "file")}

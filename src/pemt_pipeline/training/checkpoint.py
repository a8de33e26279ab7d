"""Training checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects), so loading one
runs no code: ``step``, ``model``, ``objective``, ``optimizer``, ``scheduler``, ``sampler``, ``rng``
(torch CPU/CUDA generator states, NumPy's and Python's), ``config`` (the training parameters) and
``model_config`` (`pemt_pipeline.models.files` describes the model files it shares a layout with).
It is written through `pemt_pipeline.atomic` (a temporary file in the same folder,
flushed to disk, then renamed over the previous one), so a run killed at any moment (SIGKILL
included) or a full disk leaves the last complete checkpoint in place. A checkpoint of other
parameters is set aside under a name of its own (`set_aside`), never overwritten.
"""

from __future__ import annotations

import os
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pemt_pipeline.models import load_state, save_state

LAST = "last.pt"
STALE = "stale-*.pt"  # (glob) checkpoints of runs with other parameters, set aside by `set_aside`


def rng_state() -> dict[str, Any]:
    """Every random generator a training step touches, as weights_only-safe values."""
    bit_generator, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": bit_generator, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _python_state_to_tensor(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_python_state_from_tensor(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_tensor(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_from_tensor(state: dict[str, Any]) -> tuple:
    return state["version"], tuple(int(x) for x in state["internal"].tolist()), state["gauss"]


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write atomically (`models.save_state`: temporary file, fsync, rename)."""
    return save_state(path, checkpoint)


def set_aside(path: str | os.PathLike, step: int) -> Path:
    """Move the checkpoint `path` (at training step `step`) to ``stale-<UTC time>-step<step>.pt``
    in its folder, with a counter when that name is taken: an earlier one is never overwritten."""
    path = Path(path)
    stem = f"stale-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-step{step}"
    target, n = path.with_name(f"{stem}.pt"), 1
    while os.path.lexists(target):
        target, n = path.with_name(f"{stem}-{n}.pt"), n + 1
    os.rename(path, target)
    return target


def config_differences(written: dict[str, Any], current: dict[str, Any],
                       prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, written value, current value) for each parameter that differs between two nested
    dicts (None for a key one of them lacks), e.g. [("training.lr", 0.001, 0.002)]."""
    out = []
    for key in sorted(set(written) | set(current), key=str):
        a, b = written.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b or (key in written) != (key in current):
            out.append((f"{prefix}{key}", a, b))
    return out


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load with weights_only=True (no code runs); a clear error if the file is not a checkpoint."""
    checkpoint = load_state(path, "training checkpoint")
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "step" not in checkpoint:
        raise ValueError(f"{str(path)!r} is not a training checkpoint (no model/step)")
    return checkpoint

"""Linear probe: a multinomial logistic regression on frozen features (no Kedro).

Features are standardised with the training split's mean and std, then a linear classifier with
L2 weight decay is fitted full-batch by L-BFGS (deterministic: same inputs, same result).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pemt_pipeline.configs import at_least, from_params, require


@dataclass(frozen=True)
class ProbeConfig:
    """weight_decay: L2 penalty on the weights (mean loss + wd * ||W||^2 / 2); max_iter: L-BFGS
    iterations; top_k: the k of top-k accuracy (capped at the number of classes)."""

    weight_decay: float = 1e-3
    max_iter: int = 200
    top_k: int = 5

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ProbeConfig:
        """From the YAML `evaluation.probe:` block; unknown keys raise a ValueError naming them."""
        return from_params(cls, d, "evaluation.probe")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Ranges; ValueError naming `evaluation.probe.<key>`."""
        require("evaluation.probe", self, weight_decay=at_least(0), max_iter=at_least(1), top_k=at_least(1))


def _features(name: str, x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty [n, d] array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return x


def fit_probe(x, y, cfg: ProbeConfig = ProbeConfig()) -> dict[str, Any]:
    """Fit on features x [n, d] and labels y [n] (any hashable values) -> the probe's state."""
    x = _features("train features", x)
    labels = np.asarray(y)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} train features but {len(labels)} labels")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"the train split holds {len(classes)} class(es); a probe needs at least 2")
    target = torch.from_numpy(np.searchsorted(classes, labels))
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=cfg.max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, target) + 0.5 * cfg.weight_decay * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"classes": classes, "mean": mean, "std": std, "weight": w.detach(), "bias": b.detach()}


def probe_scores(probe: dict[str, Any], x) -> np.ndarray:
    """Class scores [n, n_classes] of features x [n, d]."""
    z = (_features("features", x) - probe["mean"]) / probe["std"]
    return (z @ probe["weight"] + probe["bias"]).numpy()


def classification_metrics(scores: np.ndarray, y, classes: np.ndarray, top_k: int = 5) -> dict[str, Any]:
    """top-1, top-k, per-class accuracy and the confusion matrix (rows: true, columns: predicted)
    of scores [n, C] over `classes` for true labels y [n]; labels unseen in training count as
    errors. chance_top1 is the share of the most frequent true label (a constant guess)."""
    y = np.asarray(y)
    known = np.isin(y, classes)
    truth = np.where(known, np.searchsorted(classes, y), -1)
    k = min(top_k, len(classes))
    ranked = np.argsort(-scores, axis=1, kind="stable")
    top1 = ranked[:, 0] == truth
    topk = (ranked[:, :k] == truth[:, None]).any(1)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (truth[known], ranked[known, 0]), 1)
    per_class = {str(c): (float(top1[truth == i].mean()) if (truth == i).any() else None)
                 for i, c in enumerate(classes)}
    _, counts = np.unique(y, return_counts=True)
    return {"n": int(len(y)), "top1": float(top1.mean()), f"top{k}": float(topk.mean()),
            "top_k": k, "chance_top1": float(counts.max() / len(y)),
            "per_class": per_class, "classes": [str(c) for c in classes],
            "confusion": confusion.tolist()}


def linear_probe(train_x, train_y, test_x, test_y, cfg: ProbeConfig = ProbeConfig()) -> dict[str, Any]:
    """Fit on the train split, score the test split -> classification_metrics plus train top-1."""
    probe = fit_probe(train_x, train_y, cfg)
    out = classification_metrics(probe_scores(probe, test_x), test_y, probe["classes"], cfg.top_k)
    train = classification_metrics(probe_scores(probe, train_x), train_y, probe["classes"], 1)
    out["train_top1"] = train["top1"]
    out["n_train"] = int(len(np.asarray(train_y)))
    return out

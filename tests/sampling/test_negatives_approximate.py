"""Approximate (faiss) mode: recall of the exact top-K on a clustered synthetic set, invariants."""

from __future__ import annotations

import numpy as np
import pytest

from pemt_pipeline.sampling import NegativeConfig, build_negative_table
from pemt_pipeline.sampling.approximate import ApproximateBuilder


def clustered_set(n_videos=600, clips=5, d=32, classes=30, seed=0):
    """Class centres, video centres around them, clips around videos (a CNN-like structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 3.0
    video = centres[rng.integers(0, classes, n_videos)] + rng.normal(size=(n_videos, d))
    emb = np.repeat(video, clips, axis=0) + 0.3 * rng.normal(size=(n_videos * clips, d))
    return emb.astype(np.float32), np.repeat(np.arange(n_videos), clips)


def recall(approx, exact) -> float:
    def pairs(t):
        return set(zip(t["anchor"].tolist(), t["candidate"].tolist()))
    return len(pairs(approx) & pairs(exact)) / len(pairs(exact))


def check(tab, vid, k):
    assert np.allclose(tab.groupby("anchor")["probability"].sum(), 1.0, atol=1e-5)
    assert not np.any(vid[tab["anchor"]] == vid[tab["candidate"]])
    assert tab.groupby("anchor").size().max() <= k


@pytest.mark.parametrize("variant,n_probe", [("similar", 16), ("dissimilar", 64)])
def test_range_recall_of_exact_top_k(variant, n_probe):
    emb, vid = clustered_set()
    base = {"variant": variant, "trim": "range", "k": 16, "seed": 0}
    exact = build_negative_table(emb, vid, NegativeConfig(**base), progress=False)
    approx = build_negative_table(emb, vid, NegativeConfig(mode="approximate", index="ivf",
                                                           n_probe=n_probe, **base),
                                  progress=False)
    check(approx, vid, 16)
    assert recall(approx, exact) >= 0.9
    flat = build_negative_table(emb, vid, NegativeConfig(mode="approximate", index="flat", **base),
                                progress=False)
    assert recall(flat, exact) >= 0.99  # exhaustive search: only the extreme set's d_max may differ


def test_extreme_set_gives_exact_d_max():
    emb, vid = clustered_set()
    builder = ApproximateBuilder(emb, vid, NegativeConfig(mode="approximate", trim="range"))
    assert len(builder.extreme) < len(vid) // 4
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    d[vid[:, None] == vid[None]] = -1
    e = d[:, builder.extreme]
    assert np.mean(np.isclose(e.max(1), d.max(1), rtol=1e-5)) >= 0.99


def test_deeper_search_reaches_a_cut_beyond_the_first_neighbours():
    """oversample=1 and one class: the cut lies past the first k_search neighbours of most
    anchors, so only the deeper searches can find their K candidates."""
    emb, vid = clustered_set(n_videos=400, classes=1)
    base = {"trim": "range", "k": 8, "interval": 0.6}
    exact = build_negative_table(emb, vid, NegativeConfig(**base), progress=False)
    approx = build_negative_table(emb, vid, NegativeConfig(mode="approximate", index="flat",
                                                           oversample=1, **base), progress=False)
    check(approx, vid, 8)
    assert approx.groupby("anchor").size().min() == 8
    assert recall(approx, exact) >= 0.99


@pytest.mark.parametrize("trim,variant", [("range", "random"), ("quantile", "similar"),
                                          ("quantile", "dissimilar"), ("quantile", "random")])
def test_sample_based_variants_keep_the_rules(trim, variant):
    emb, vid = clustered_set(n_videos=200)
    cfg = NegativeConfig(mode="approximate", variant=variant, trim=trim, k=8, sample_size=256)
    tab = build_negative_table(emb, vid, cfg, progress=False)
    check(tab, vid, 8)
    assert tab["anchor"].nunique() == len(vid)


def test_quantile_sample_matches_exact_when_exhaustive():
    """With the sample covering every clip, the sample-based quantile path is the exact rule."""
    emb, vid = clustered_set(n_videos=60)
    for variant in ("similar", "dissimilar"):
        base = {"variant": variant, "k": 8}
        exact = build_negative_table(emb, vid, NegativeConfig(**base), progress=False)
        approx = build_negative_table(emb, vid, NegativeConfig(mode="approximate",
                                                               sample_size=10**6, **base),
                                      progress=False)
        assert recall(approx, exact) == 1.0


def test_approximate_is_reproducible():
    emb, vid = clustered_set(n_videos=200)
    cfg = NegativeConfig(mode="approximate", trim="range", k=8)
    a = build_negative_table(emb, vid, cfg, progress=False)
    b = build_negative_table(emb, vid, cfg, progress=False)
    assert a.equals(b)

"""Exact blockwise construction: equal to brute force, invariants, memory plan, memmap input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pemt_pipeline.sampling import NegativeConfig, blockwise, build_negative_table, reference_table
from pemt_pipeline.sampling.blockwise import ExactBuilder, make_plan

COMBOS = list(itertools.product(("quantile", "range"), ("similar", "dissimilar")))


def random_set(n=300, d=8, videos=70, seed=0):
    """Gaussian clips; videos of random sizes; rows not in video order."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, videos, n)


def small_cfg(**kw):
    """Tiny blocks and pilots, so that several blocks, chunks and brackets are exercised."""
    base = {"k": 6, "max_block_mb": 2.0, "pilot_size": 40, "device": "cpu"}
    return NegativeConfig(**{**base, **kw})


def assert_same_table(got, want):
    m = got.merge(want, on=["anchor", "candidate"], how="outer", indicator=True)
    assert (m["_merge"] == "both").all(), m[m["_merge"] != "both"].head()
    assert np.allclose(m["probability_x"], m["probability_y"], atol=1e-5)
    assert np.allclose(m["distance_x"], m["distance_y"], rtol=1e-4, atol=1e-4)


def assert_invariants(tab, vid, k):
    sums = tab.groupby("anchor")["probability"].sum()
    assert np.allclose(sums, 1.0, atol=1e-5)
    assert not np.any(vid[tab["anchor"]] == vid[tab["candidate"]])
    assert tab.groupby("anchor").size().max() <= k
    assert not tab.duplicated(["anchor", "candidate"]).any()
    a, p = tab["anchor"].to_numpy(), tab["probability"].to_numpy()
    assert np.all(np.diff(a) >= 0)
    assert not np.any((a[1:] == a[:-1]) & (p[1:] > p[:-1] + 1e-7))


@pytest.mark.parametrize("trim,variant", COMBOS)
def test_blockwise_equals_brute_force(trim, variant):
    emb, vid = random_set()
    cfg = small_cfg(trim=trim, variant=variant)
    builder = ExactBuilder(emb, vid, cfg)
    got = builder.run(np.arange(len(vid)), progress=False)
    assert builder.stats["blocks"] > 1
    assert_same_table(got, reference_table(emb, vid, cfg))
    assert_invariants(got, vid, cfg.k)


@pytest.mark.parametrize("trim", ["quantile", "range"])
def test_random_variant_rules(trim):
    emb, vid = random_set(seed=1)
    cfg = small_cfg(trim=trim, variant="random", k=10)
    got = build_negative_table(emb, vid, cfg, progress=False)
    assert_invariants(got, vid, cfg.k)
    kept = reference_table(emb, vid, NegativeConfig(trim=trim, variant="similar", k=len(vid)))
    assert got.merge(kept, on=["anchor", "candidate"], how="left")["distance_y"].notna().all()
    sizes = got.groupby("anchor").size()
    assert (sizes == np.minimum(10, kept.groupby("anchor").size()[sizes.index])).all()
    per_anchor = got.groupby("anchor")["probability"]
    assert np.allclose(per_anchor.max(), per_anchor.min())  # uniform


def test_fallback_rows_are_exact(monkeypatch):
    """A bracket below the needed rank sends every anchor to the full-row path: still exact."""
    monkeypatch.setattr(blockwise, "Z", -20.0)
    emb, vid = random_set(seed=2)
    for trim, variant in COMBOS + [("quantile", "random")]:
        cfg = small_cfg(trim=trim, variant=variant)
        builder = ExactBuilder(emb, vid, cfg)
        got = builder.run(np.arange(len(vid)), progress=False)
        if (trim, variant) in COMBOS:
            assert builder.stats["fallback_anchors"] > len(vid) // 2
            assert_same_table(got, reference_table(emb, vid, cfg))
        assert_invariants(got, vid, cfg.k)


def test_similar_favours_near_dissimilar_far():
    emb, vid = random_set(n=400, d=16, videos=100, seed=3)
    mean = {}
    for variant in ("similar", "random", "dissimilar"):
        tab = build_negative_table(emb, vid, NegativeConfig(variant=variant, k=16, seed=5),
                                   progress=False)
        mean[variant] = np.average(tab["distance"], weights=tab["probability"])
    assert mean["similar"] < mean["random"] < mean["dissimilar"]
    # within one table too: similar's probabilities fall, dissimilar's rise, with distance
    for variant, sign in (("similar", -1), ("dissimilar", 1)):
        tab = build_negative_table(emb, vid, NegativeConfig(variant=variant, k=16), progress=False)
        corr = tab.groupby("anchor")[["distance", "probability"]].corr().iloc[0::2, 1]
        assert (np.sign(corr.dropna()) == sign).mean() > 0.99


def test_memmap_input_and_anchor_subset(tmp_path):
    emb, vid = random_set(seed=4)
    np.save(tmp_path / "emb.npy", emb)
    mm = np.load(tmp_path / "emb.npy", mmap_mode="r")
    cfg = small_cfg()
    full = build_negative_table(emb, vid, cfg, progress=False)
    from_mm = build_negative_table(mm, vid, cfg, progress=False)
    assert full.equals(from_mm)
    some = np.array([5, 17, 100, 299])
    sub = build_negative_table(mm, vid, cfg, progress=False, anchors=some)
    assert sorted(sub["anchor"].unique()) == some.tolist()
    assert_same_table(sub, full[full["anchor"].isin(some)])


def test_video_order_input_matches_shuffled():
    emb, vid = random_set(seed=6)
    order = np.argsort(vid, kind="stable")
    cfg = small_cfg()
    shuffled = build_negative_table(emb, vid, cfg, progress=False)
    ordered = build_negative_table(emb[order], vid[order], cfg, progress=False)
    ordered["anchor"], ordered["candidate"] = order[ordered["anchor"]], order[ordered["candidate"]]
    assert_same_table(ordered, shuffled)


def test_block_plan_respects_memory_bound():
    cfg = NegativeConfig(max_block_mb=64, device="cpu")
    blocks = [make_plan(n, 512, n, cfg, blockwise.resolve_device("cpu")).block
              for n in (10_000, 1_000_000, 10_000_000)]
    assert blocks[0] >= blocks[1] >= blocks[2] >= 1  # fewer anchors per block as N grows
    with pytest.raises(ValueError, match="max_block_mb=1.0 is too small for N=10000000"):
        make_plan(10_000_000, 512, 10, NegativeConfig(max_block_mb=1.0),
                  blockwise.resolve_device("cpu"))

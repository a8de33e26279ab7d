"""Normalisation, trimming and probabilities on small hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from pemt_pipeline.sampling import (
    NegativeConfig,
    build_negative_table,
    embedding_space,
    normalise,
    probabilities,
    trim_count,
)


def line_set():
    """Anchor 0 at x=0 (video 0, with an own-video clip at 0.5); candidates at x=1..10, one video
    each: distances 1..10, M = 10."""
    x = np.array([0.0, 0.5] + list(range(1, 11)), dtype=np.float32)
    emb = np.stack([x, np.zeros_like(x)], axis=1)
    vid = np.array([0, 0] + list(range(1, 11)))
    return emb, vid


def table_of(emb, vid, anchors=(0,), **cfg):
    return build_negative_table(emb, vid, NegativeConfig(**cfg), progress=False,
                                anchors=np.array(anchors))


def test_trim_count_hand_cases():
    assert trim_count(np.array([39, 40, 100, 1000]), 0.95).tolist() == [0, 1, 2, 25]
    assert trim_count(20, 0.9) == 1  # 20 * 0.1 / 2 = 1 despite 1 - 0.9 < 0.1 in floating point
    assert trim_count(10, 1.0) == 0


def test_normalise_min_max_and_degenerate():
    assert np.allclose(normalise([2.0, 3.0, 4.0], 2.0, 4.0), [0.0, 0.5, 1.0])
    assert np.allclose(normalise([3.0, 3.0], 3.0, 3.0), [0.0, 0.0])  # d_max = d_min


def test_probabilities_hand_worked():
    d = np.array([[1.0, 2.0, 3.0]])
    ok = np.ones_like(d, dtype=bool)
    assert np.allclose(probabilities(d, ok, 1.0, 3.0, "similar", 0.0), [[2 / 3, 1 / 3, 0.0]])
    assert np.allclose(probabilities(d, ok, 1.0, 3.0, "dissimilar", 0.0), [[0.0, 1 / 3, 2 / 3]])
    assert np.allclose(probabilities(d, ok, 1.0, 3.0, "random", 0.0), [[1 / 3] * 3])
    eps = probabilities(d, ok, 1.0, 3.0, "similar", 0.1)
    assert np.allclose(eps, np.array([[1.1, 0.6, 0.1]]) / 1.8)  # the far edge stays drawable


def test_quantile_similar_line():
    emb, vid = line_set()
    # interval 0.8: t = floor(10 * 0.2 / 2) = 1 -> drop distance 1 and 10; keep 2..9
    tab = table_of(emb, vid, variant="similar", k=3, interval=0.8, eps=0.0)
    assert tab["candidate"].tolist() == [3, 4, 5]  # x = 2, 3, 4
    assert np.allclose(tab["distance"], [2, 3, 4])
    dn = (np.array([2, 3, 4]) - 1) / 9  # normalised over all candidates (1..10)
    assert np.allclose(tab["probability"], (1 - dn) / (1 - dn).sum(), atol=1e-6)


def test_quantile_dissimilar_line():
    emb, vid = line_set()
    tab = table_of(emb, vid, variant="dissimilar", k=3, interval=0.8, eps=0.0)
    assert np.allclose(tab["distance"], [9, 8, 7])
    dn = (np.array([9, 8, 7]) - 1) / 9
    assert np.allclose(tab["probability"], dn / dn.sum(), atol=1e-6)


def test_range_trimming_line():
    emb, vid = line_set()
    # interval 0.5: alpha 0.25, kept d in [1 + 2.25, 10 - 2.25] = [3.25, 7.75] -> 4..7
    tab = table_of(emb, vid, variant="similar", k=3, interval=0.5, trim="range")
    assert np.allclose(tab["distance"], [4, 5, 6])
    tab = table_of(emb, vid, variant="dissimilar", k=3, interval=0.5, trim="range")
    assert np.allclose(tab["distance"], [7, 6, 5])
    tab = table_of(emb, vid, variant="random", k=10, interval=0.5, trim="range")
    assert sorted(tab["distance"].round().tolist()) == [4, 5, 6, 7]
    assert np.allclose(tab["probability"], 0.25)


def test_random_keeps_interval_uniformly():
    emb, vid = line_set()
    tab = table_of(emb, vid, variant="random", k=32, interval=0.8)
    assert sorted(tab["distance"].round().tolist()) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert np.allclose(tab["probability"], 1 / 8)


def test_all_distances_equal_is_uniform():
    angles = np.linspace(0, 2 * np.pi, 9)[:-1]
    emb = np.concatenate([[[0.0, 0.0]], np.stack([np.cos(angles), np.sin(angles)], 1)])
    vid = np.arange(9)
    for variant in ("similar", "dissimilar", "random"):
        tab = table_of(emb.astype(np.float32), vid, variant=variant, k=4)
        assert len(tab) == 4 and np.allclose(tab["probability"], 0.25)
        assert np.allclose(tab["distance"], 1.0, atol=1e-6)


def test_fewer_candidates_than_k_and_far_edge_epsilon():
    emb = np.array([[0.0], [1.0], [3.0]], dtype=np.float32)
    tab = build_negative_table(emb, np.arange(3), NegativeConfig(k=32, eps=1e-3), progress=False)
    assert tab.groupby("anchor").size().tolist() == [2, 2, 2]  # M = 2 < K, t = 0
    far = tab[(tab.anchor == 0) & (tab.candidate == 2)]["probability"].item()
    assert far == pytest.approx(1e-3 / (1 + 1e-3 + 1e-3), rel=1e-5)  # 1 - d~ = 0 there, + eps


def test_single_video_gives_empty_table():
    tab = build_negative_table(np.ones((4, 3), np.float32), np.zeros(4, int), NegativeConfig(),
                               progress=False)
    assert len(tab) == 0 and list(tab.columns) == ["anchor", "candidate", "probability",
                                                     "distance"]


def test_config_from_dict_rejects_unknown_and_bad_values():
    assert NegativeConfig.from_dict({"k": 4, "variant": "random"}).k == 4
    with pytest.raises(ValueError, match=r"unknown negatives parameter\(s\) \['kk', 'vairant'\]"):
        NegativeConfig.from_dict({"kk": 4, "vairant": "x"})
    for bad in ({"variant": "near"}, {"k": 0}, {"interval": 0.0}, {"interval": 1.5},
                {"mode": "fast"}, {"max_block_mb": 0}, {"trim": "sd"}, {"device": "tpu"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NegativeConfig(**bad)


def test_input_errors_name_the_problem():
    cfg = NegativeConfig()
    emb = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="2-D"):
        build_negative_table(np.zeros(4, np.float32), np.arange(4), cfg)
    with pytest.raises(ValueError, match="3 entries but embeddings has 4 rows"):
        build_negative_table(emb, np.arange(3), cfg)
    with pytest.raises(ValueError, match="integer"):
        build_negative_table(emb, np.arange(4.0), cfg)
    bad = emb.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2 is not finite"):
        build_negative_table(bad, np.arange(4), cfg, progress=False)
    with pytest.raises(ValueError, match="row 2 is not finite"):
        build_negative_table(bad, np.arange(4), NegativeConfig(mode="approximate"), progress=False)


def test_embedding_space():
    rng = np.random.default_rng(0)
    v, a = rng.normal(size=(5, 4)), rng.normal(size=(5, 3)) * 10
    assert np.allclose(embedding_space(v, a, "visual"), v)
    assert embedding_space(v, a, "audio").dtype == np.float32
    joint = embedding_space(v, a, "joint")
    assert joint.shape == (5, 7) and np.allclose(np.linalg.norm(joint, axis=1), 1.0)
    assert np.allclose(np.linalg.norm(joint[:, :4], axis=1), np.sqrt(0.5))  # equal weight
    with pytest.raises(ValueError, match="space"):
        embedding_space(v, a, "both")
    with pytest.raises(ValueError, match="5 clips but audio has 4"):
        embedding_space(v, a[:4], "joint")

"""Probe and retrieval metrics on hand-made inputs."""

import numpy as np
import pytest

from pemt_pipeline.evaluation import ProbeConfig, classification_metrics, linear_probe, ranks, retrieval_metrics
from pemt_pipeline.evaluation.video import pair_auc


def test_perfect_retrieval_has_recall_one_and_rank_one():
    scores = np.eye(20) * 5 + np.random.default_rng(0).normal(size=(20, 20)) * 0.1
    m = retrieval_metrics(scores, ks=(1, 5))
    assert m["recall@1"] == m["recall@5"] == 1.0 and m["median_rank"] == 1.0
    assert m["chance_recall@1"] == pytest.approx(1 / 20) and m["chance_median_rank"] == 10.5


def test_random_retrieval_is_about_chance():
    rng = np.random.default_rng(0)
    r1, r10, med = [], [], []
    for _ in range(50):
        m = retrieval_metrics(rng.normal(size=(100, 100)), ks=(1, 10))
        r1.append(m["recall@1"]), r10.append(m["recall@10"]), med.append(m["median_rank"])
    assert np.mean(r1) == pytest.approx(0.01, abs=0.01)
    assert np.mean(r10) == pytest.approx(0.10, abs=0.02)
    assert np.mean(med) == pytest.approx(50.5, abs=5)


def test_ties_count_against_the_query():
    assert ranks(np.zeros((4, 4))).tolist() == [4, 4, 4, 4]
    with pytest.raises(ValueError, match="square"):
        ranks(np.zeros((3, 4)))


def test_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 4
    y = np.repeat(np.arange(5), 40)
    x = centres[y] + rng.normal(size=(200, 16))
    train = np.arange(200) % 2 == 0
    m = linear_probe(x[train], y[train], x[~train], y[~train], ProbeConfig())
    assert m["top1"] >= 0.98 and m["top5"] == 1.0 and m["train_top1"] == 1.0
    assert np.array(m["confusion"]).trace() == round(m["top1"] * m["n"])
    assert all(v >= 0.9 for v in m["per_class"].values())


def test_probe_on_noise_is_near_chance():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 100)
    x = rng.normal(size=(400, 8))
    train = np.arange(400) % 2 == 0
    assert linear_probe(x[train], y[train], x[~train], y[~train])["top1"] < 0.4


def test_classification_metrics_by_hand():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    m = classification_metrics(scores, np.array(["a", "b", "c", "c"]), np.array(["a", "b", "c"]), top_k=2)
    assert m["top1"] == 0.75 and m["top2"] == 0.75
    assert m["per_class"] == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert m["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]


def test_probe_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 2"):
        linear_probe(np.zeros((4, 2)), [0, 0, 0, 0], np.zeros((2, 2)), [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(np.full((4, 2), np.nan), [0, 1, 0, 1], np.zeros((2, 2)), [0, 1])


def test_pair_auc_by_hand():
    # 2 matched x 3 mismatched = 6 comparisons: 4 wins, 1 tie (half), 1 loss -> 4.5 / 6
    assert pair_auc(np.array([2.0, 0.5]), np.array([1.0, 0.5, 0.0])) == 4.5 / 6
    assert pair_auc(np.array([3.0]), np.array([1.0, 2.0])) == 1.0
    assert pair_auc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0

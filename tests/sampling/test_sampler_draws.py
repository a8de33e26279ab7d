"""NegativeSampler: table probabilities, uniform fallback, video batches, reproducible state."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pemt_pipeline.sampling import NegativeConfig, NegativeSampler, build_negative_table

# 6 clips, 3 videos of 2 clips: video of clip i is i // 2
VID = np.array([0, 0, 1, 1, 2, 2])
TABLE = pd.DataFrame({"anchor": [0, 0, 0, 2], "candidate": [2, 4, 5, 0],
                      "probability": [0.5, 0.3, 0.2, 1.0]})


def test_draws_follow_table_probabilities():
    s = NegativeSampler(TABLE, VID, seed=0)
    draws = s.draw(np.array([0]), 20000)[0]
    freq = np.bincount(draws, minlength=6) / len(draws)
    assert np.allclose(freq[[2, 4, 5]], [0.5, 0.3, 0.2], atol=0.015)
    assert freq[[0, 1, 3]].sum() == 0
    assert (s.draw(np.array([2, 2]), 50) == 0).all()


def test_uniform_fallback_never_own_video():
    s = NegativeSampler(TABLE, VID, seed=1)
    draws = s.draw(np.array([1, 3, 4, 5]), 3000)  # anchors absent from the table
    for anchor, row in zip([1, 3, 4, 5], draws):
        assert not np.any(VID[row] == VID[anchor])
        freq = np.bincount(row, minlength=6)[VID != VID[anchor]] / len(row)
        assert np.allclose(freq, 0.25, atol=0.03)  # uniform over the 4 other clips


def test_reproducible_and_resumable():
    a, b = NegativeSampler(TABLE, VID, seed=7), NegativeSampler(TABLE, VID, seed=7)
    anchors = np.array([0, 1, 2, 3])
    assert np.array_equal(a.draw(anchors, 5), b.draw(anchors, 5))
    assert not np.array_equal(NegativeSampler(TABLE, VID, seed=8).draw(anchors, 50),
                              NegativeSampler(TABLE, VID, seed=7).draw(anchors, 50))
    state = json.loads(json.dumps(a.state_dict()))  # checkpoint-able as plain data
    expected = [a.draw(anchors, 4), a.video_batch(3)]
    resumed = NegativeSampler(TABLE, VID, seed=123)
    resumed.load_state_dict(state)
    assert np.array_equal(resumed.draw(anchors, 4), expected[0])
    assert np.array_equal(resumed.video_batch(3), expected[1])


def test_video_batches_are_mutual_negatives():
    """Two well separated groups of videos: a batch built from the table stays in one group."""
    rng = np.random.default_rng(0)
    centres = np.repeat(np.array([[0.0] * 8, [50.0] * 8]), 20, axis=0)  # 40 videos, 2 groups
    emb = np.repeat(centres, 3, axis=0) + rng.normal(size=(120, 8))
    vid = np.repeat(np.arange(40), 3)
    tab = build_negative_table(emb.astype(np.float32), vid, NegativeConfig(k=16, interval=1.0),
                               progress=False)
    s = NegativeSampler(tab, vid, seed=3)
    for _ in range(20):
        batch = s.video_batch(8)
        assert len(set(batch.tolist())) == 8
        assert len(set((batch // 20).tolist())) == 1  # all from the first anchor's group
    assert len(s.video_batch(40)) == 40  # every video: falls back to unused ones when needed


def test_errors_name_the_problem():
    bad = TABLE.assign(candidate=[1, 4, 5, 0])  # clip 1 is anchor 0's own video
    with pytest.raises(ValueError, match="own video"):
        NegativeSampler(bad, VID)
    with pytest.raises(ValueError, match="missing columns"):
        NegativeSampler(TABLE.drop(columns="probability"), VID)
    with pytest.raises(ValueError, match="no negative"):
        NegativeSampler(TABLE.iloc[:0], np.zeros(3, int)).draw(np.array([0]), 1)
    s = NegativeSampler(TABLE, VID)
    with pytest.raises(ValueError, match="clip ids in"):
        s.draw(np.array([6]), 1)
    with pytest.raises(ValueError, match="batch_size"):
        s.video_batch(4)

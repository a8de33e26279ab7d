"""Draw content-aware negatives from a negative table, reproducibly (plain numpy; no Kedro).

Draws are *with replacement* from each anchor's table distribution (inverse-CDF on the per-anchor
cumulative probabilities), so any number of negatives can be drawn even when an anchor kept fewer
than K candidates and the drawn frequencies match the table's probabilities exactly. Anchors
absent from the table fall back to a uniform draw over the clips of all *other* videos. The
anchor's own video is never drawn (the table is checked for that on construction). All randomness
comes from one numpy PCG64 generator seeded by `seed`; `state_dict()` / `load_state_dict()` save
and restore it, so a resumed training run draws the same sequence.

Memory: the table's candidate column is kept as it is when the table is sorted by anchor (as built
and as read, a single file or a partitioned one: `tablefile.py`), plus float64 cumulative
probabilities [rows] and O(N) indexes: at 10M clips x K=32 (320M rows) 2.56 GB besides the table's
own 2.56 GB of candidates, plus temporaries of CHUNK (4M) rows while indexing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REQUIRED = ("anchor", "candidate", "probability")
CHUNK = 1 << 22  # rows per pass of the table's checks and cumulative sums (bounded temporaries)


class NegativeSampler:
    """Negatives for batches of anchors (clip row ids) from a table (see `build_negative_table`)."""

    def __init__(self, table: pd.DataFrame, video_index: np.ndarray, seed: int = 0):
        self.vid = _video_index(video_index)
        self._index_table(_checked_table(table, self.vid))
        self._index_videos()
        self.seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))

    def _index_table(self, table: pd.DataFrame) -> None:
        """CSR by anchor: segment per anchor, candidates, cumulative probabilities in (s, s+1].
        The table's columns are used as they are when already sorted by anchor (no copy); the
        cumulative sums are built CHUNK rows at a time (the same values as one global pass)."""
        anchor = table["anchor"].to_numpy(np.int64)
        cand = table["candidate"].to_numpy(np.int64)
        prob = table["probability"].to_numpy()
        if len(anchor) > 1 and not np.all(anchor[1:] >= anchor[:-1]):
            order = np.argsort(anchor, kind="stable")
            anchor, cand, prob = anchor[order], cand[order], prob[order]
        self._cand = cand  # [nnz]
        start = np.flatnonzero(np.r_[True, anchor[1:] != anchor[:-1]]) if len(anchor) else np.zeros(0, np.int64)
        count = np.diff(np.r_[start, len(anchor)])
        anchors = anchor[start]
        self._segment = np.full(len(self.vid), -1, dtype=np.int64)  # [N] segment or -1
        self._segment[anchors] = np.arange(len(anchors))
        self._start, self._count = start, count
        self._cum = np.empty(len(anchor), dtype=np.float64)  # [nnz], increasing
        carry, s0 = 0.0, 0
        while s0 < len(start):  # whole segments of about CHUNK rows
            s1 = max(s0 + 1, int(np.searchsorted(start, start[s0] + CHUNK, side="right")))
            r0, r1 = int(start[s0]), int(start[s1 - 1] + count[s1 - 1])
            cs = np.cumsum(np.r_[carry, prob[r0:r1].astype(np.float64)])  # cs[i] = sum of rows < r0 + i
            st, ct = start[s0:s1] - r0, count[s0:s1]
            base, total = cs[st], cs[st + ct] - cs[st]
            if np.any(total <= 0):
                bad = int(anchors[s0 + np.flatnonzero(total <= 0)[0]])
                raise ValueError(f"table: anchor {bad} has probabilities summing to 0")
            seg = np.repeat(np.arange(s1 - s0), ct)
            cum = (cs[1:] - base[seg]) / total[seg]
            cum[st + ct - 1] = 1.0
            self._cum[r0:r1] = (seg + s0) + cum
            carry, s0 = float(cs[-1]), s1

    def _index_videos(self) -> None:
        """Clips in video order, each clip's own-video range, and the clips of each video."""
        n = len(self.vid)
        self._order = np.argsort(self.vid, kind="stable")
        self._videos, first, counts = np.unique(self.vid[self._order], return_index=True,
                                                return_counts=True)
        video_of = np.searchsorted(self._videos, self.vid)  # [N] video number per clip
        self._vstart, self._vlen = first[video_of], counts[video_of]
        self._first, self._counts = first, counts
        self._n = n

    @property
    def videos(self) -> np.ndarray:
        """The distinct video ids (values of video_index), sorted."""
        return self._videos

    def draw(self, anchors: np.ndarray, n: int) -> np.ndarray:
        """[A] anchor clip ids -> [A, n] candidate clip ids (with replacement; see module doc)."""
        anchors = self._anchors(anchors)
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        u = self._rng.random((len(anchors), int(n)))  # one uniform per draw, whatever the path
        seg = self._segment[anchors]
        out = np.empty(u.shape, dtype=np.int64)
        has = seg >= 0
        if has.any():
            s = seg[has][:, None]
            j = np.searchsorted(self._cum, s + u[has], side="right")
            j = np.clip(j, self._start[s], self._start[s] + self._count[s] - 1)
            out[has] = self._cand[j]
        if (~has).any():
            out[~has] = self._uniform(anchors[~has], u[~has])
        return out

    def _uniform(self, anchors: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Uniform over the clips of other videos: skip the own video's range in video order."""
        start, own = self._vstart[anchors][:, None], self._vlen[anchors][:, None]
        others = self._n - own
        if np.any(others == 0):
            bad = int(anchors[np.flatnonzero(others[:, 0] == 0)[0]])
            raise ValueError(f"anchor {bad}: its video holds every clip, there is no negative")
        r = np.minimum((u * others).astype(np.int64), others - 1)
        return self._order[r + own * (r >= start)]

    def video_batch(self, batch_size: int) -> np.ndarray:
        """[batch_size] distinct video ids, each after the first the video of a content-aware
        negative drawn (from the table) for a random clip of a random earlier member; a uniform
        unused video only when 8 tries in a row hit members already in the batch."""
        batch_size = int(batch_size)
        if not 1 <= batch_size <= len(self._videos):
            raise ValueError(f"batch_size must be in [1, {len(self._videos)}] (the number of "
                             f"videos), got {batch_size}")
        chosen = [int(self._rng.integers(len(self._videos)))]  # video numbers
        taken = {chosen[0]}
        misses = 0
        while len(chosen) < batch_size:
            v = chosen[int(self._rng.integers(len(chosen)))]
            clip = self._order[self._first[v] + int(self._rng.integers(self._counts[v]))]
            w = int(np.searchsorted(self._videos, self.vid[self.draw(np.array([clip]), 1)[0, 0]]))
            if w in taken and misses < 8:
                misses += 1
                continue
            if w in taken:
                free = np.setdiff1d(np.arange(len(self._videos)), chosen)
                w = int(free[self._rng.integers(len(free))])
            chosen.append(w)
            taken.add(w)
            misses = 0
        return self._videos[np.array(chosen)]

    def state_dict(self) -> dict:
        """The generator state (plain ints and strings; JSON- and torch.save-able)."""
        return {"seed": self.seed, "bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if "bit_generator" not in state:
            raise ValueError(f"sampler state needs key 'bit_generator', got keys {sorted(state)}")
        self._rng.bit_generator.state = state["bit_generator"]
        self.seed = int(state.get("seed", self.seed))

    def _anchors(self, anchors: np.ndarray) -> np.ndarray:
        a = np.asarray(anchors)
        if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
            raise ValueError(f"anchors must be a 1-D integer array, got shape {a.shape} "
                             f"dtype {a.dtype}")
        a = a.astype(np.int64)
        if a.size and (a.min() < 0 or a.max() >= self._n):
            raise ValueError(f"anchors must be clip ids in [0, {self._n}), got range "
                             f"[{a.min()}, {a.max()}]")
        return a


def _video_index(video_index: np.ndarray) -> np.ndarray:
    vid = np.asarray(video_index)
    if vid.ndim != 1 or len(vid) == 0 or not np.issubdtype(vid.dtype, np.integer):
        raise ValueError(f"video_index must be a non-empty 1-D integer array, got shape "
                         f"{vid.shape} dtype {vid.dtype}")
    return vid.astype(np.int64)


def _checked_table(table: pd.DataFrame, vid: np.ndarray) -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"table is missing columns {missing} (has {list(table.columns)})")
    a = table["anchor"].to_numpy(np.int64)
    c = table["candidate"].to_numpy(np.int64)
    p = table["probability"].to_numpy()
    n = len(vid)
    for name, ids in (("anchor", a), ("candidate", c)):
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"table {name} ids must be in [0, {n}) (video_index length)")
    for lo in range(0, len(a), CHUNK):  # bounded temporaries at any table size
        hi = lo + CHUNK
        pc = p[lo:hi].astype(np.float64, copy=False)
        if not np.all(np.isfinite(pc) & (pc >= 0)):
            raise ValueError("table probabilities must be finite and >= 0")
        same = vid[a[lo:hi]] == vid[c[lo:hi]]
        if same.any():
            i = lo + int(np.flatnonzero(same)[0])
            raise ValueError(f"table row {i}: candidate {c[i]} is from anchor {a[i]}'s own video")
    return table

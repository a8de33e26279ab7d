"""Exact negative table by blockwise matrix products, in memory bounded by `max_block_mb`.

Clips are put in video order (a stable argsort of video_index; no copy when already sorted), so an
anchor's own video is a contiguous range of candidate positions. The table's rules (`table.py`)
need, per anchor, a few order statistics of its M candidate distances (the t+1-th smallest, the
K after it, the extremes), never all M values at once:

1. Pilot. A block of B anchors [B, d] is multiplied with a uniform sample of S candidates
   (S = min(pilot_size, max(256, N^(2/3))), without replacement). For each rank R an anchor
   needs (e.g. t + K for `similar`), the pilot gives a threshold b: the sample order statistic at
   rank S*R/M + 3.5 binomial standard deviations, so that count(d <= b) >= R for all but ~2e-4
   of the anchors while only about R + 3.5*sqrt(R*M/S) + M/S candidates fall below it.
2. One pass. Candidate chunks [C, d] are streamed (views of a memmap, no copy when sorted);
   per chunk s = ||c||^2 - 2 a.c ([B, C], one addmm; ||a||^2 is constant per anchor, so ranks and
   thresholds are taken on s and ||a||^2 added back only to the few values reported). Own-video
   entries are masked and the entries beyond the pilot threshold compacted into a per-anchor
   buffer [B, cap]; the extreme at a buffered end is the buffer's, only an end without a buffer
   keeps a running minimum or maximum. Nothing of size [B, N] ever exists.
3. Exact selection. The buffer holds every candidate below b, hence the exact order statistics up
   to rank count(d <= b): it is verified (count >= R, no overflow, enough kept for `range`) and the
   rules applied by selection (kth_smallest/smallest: numpy's partition on CPU, torch's
   kthvalue/topk elsewhere). An anchor that fails verification (~2e-4 of them; also
   massive ties) is redone from its full row of N distances; its results are exact either way.

Reported distances are sqrt(s + ||a||^2) from the same float32 products (absolute error about
1e-7 * (||a||^2 + ||c||^2) in d^2: negligible except for near-duplicates, which trimming drops);
recomputing them from differences would cost a gather of B*K candidate rows per block.

Memory: B is chosen so that the chunk [B, C], the pilot [B, S], the buffers [B, cap] and the
selection temporaries fit in max_block_mb; cap is about 4% of N for quantile trimming
(a few thousand entries for range), so B shrinks as N grows and the working set stays under the
bound (at N = 1M and 256 MB, B is still ~220; the bound fails only past N ~ 2.5e8 at 256 MB, where
one anchor's buffer alone would exceed it: make_plan raises then, naming the needed size).
Besides the output, O(N) bookkeeping remains (squared norms, video order). The random variant
draws from the pilot sample (a uniform subset of the candidates, so a uniform choice among its
kept members is uniform over the kept set); it is reproducible for a given seed and block plan.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pemt_pipeline.devices import resolve_device

from .config import NegativeConfig, first_bad_row
from .table import TableParts, range_bounds, trim_count
from .tablefile import NegativeTable

Z = 3.5  # pilot bracket margin, in binomial standard deviations (a miss costs one full row)
MAX_ANCHORS = 512  # anchors per block; matrix products are efficient well before this
CHUNK = 2048  # candidates per streamed chunk
FMAX = torch.finfo(torch.float32).max


def range_extra(k: int) -> int:
    """Bottom ranks collected for range trimming: room for k kept ones after a few trimmed ones."""
    return 4 * k + 16


@dataclass
class Layout:
    """Clips in video order: sorted position -> row (order), video ranges, candidate counts."""

    order: np.ndarray  # [N] row id of each sorted position
    identity: bool  # rows already in video order
    vid: np.ndarray  # [N] video id per sorted position
    vstart: np.ndarray  # [N] own-video range [vstart, vend) per sorted position
    vend: np.ndarray
    m: np.ndarray  # [N] candidates per position

    @classmethod
    def of(cls, video_index: np.ndarray) -> Layout:
        n = len(video_index)
        order = np.argsort(video_index, kind="stable")
        vid = video_index[order]
        cut = np.flatnonzero(np.diff(vid)) + 1
        starts, ends = np.r_[0, cut], np.r_[cut, n]
        lens = ends - starts
        vstart, vend = np.repeat(starts, lens), np.repeat(ends, lens)
        return cls(order, bool(np.array_equal(order, np.arange(n))), vid, vstart, vend,
                   n - (vend - vstart))

    def positions(self, rows: np.ndarray) -> np.ndarray:
        inv = np.empty(len(self.order), dtype=np.int64)
        inv[self.order] = np.arange(len(self.order))
        return np.sort(inv[rows])

    def own_pairs(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(block row, candidate position) of every own-video entry of the anchors `pos`."""
        lens = self.vend[pos] - self.vstart[pos]
        rows = np.repeat(np.arange(len(pos)), lens)
        first = np.repeat(np.cumsum(lens) - lens, lens)
        return rows, np.repeat(self.vstart[pos], lens) + np.arange(lens.sum()) - first


class Rows:
    """Candidate rows by sorted position as float32 tensors on the device (memmap-friendly)."""

    def __init__(self, embeddings: np.ndarray, layout: Layout, device: torch.device,
                 cache_mb: float):
        self.emb, self.layout, self.device = embeddings, layout, device
        n, d = embeddings.shape
        self.cache = None
        if device.type != "cpu" and n * d * 4 <= cache_mb * 2**20:
            self.cache = torch.cat([self._load(lo, min(n, lo + CHUNK))
                                    for lo in range(0, n, CHUNK)])

    def _load(self, lo: int, hi: int) -> torch.Tensor:
        if self.layout.identity:
            block = np.asarray(self.emb[lo:hi])
        else:
            idx = self.layout.order[lo:hi]
            block = self.emb[np.sort(idx)][np.argsort(np.argsort(idx))]
        block = np.ascontiguousarray(block, dtype=np.float32)
        with warnings.catch_warnings():  # read-only memmap views are never written
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(block).to(self.device)

    def slice(self, lo: int, hi: int) -> torch.Tensor:
        """Rows at sorted positions [lo, hi): [hi - lo, d]."""
        return self.cache[lo:hi] if self.cache is not None else self._load(lo, hi)

    def take(self, pos: np.ndarray) -> torch.Tensor:
        """Rows at sorted positions `pos` (any order): [len(pos), d]."""
        if self.cache is not None:
            return self.cache[torch.from_numpy(pos).to(self.device)]
        rows = self.layout.order[pos]
        order = np.argsort(rows, kind="stable")
        block = np.empty((len(pos), self.emb.shape[1]), dtype=np.float32)
        block[order] = self.emb[rows[order]]
        return torch.from_numpy(block).to(self.device)

    def squared_norms(self) -> torch.Tensor:
        """[N] ||c||^2 per sorted position; a ValueError names the first non-finite row."""
        n = self.emb.shape[0]
        out = torch.empty(n, device=self.device)  # written in place: no small tensors pinning
        for lo in range(0, n, CHUNK):  # the heap between the chunk temporaries (fragmentation)
            hi = min(n, lo + CHUNK)
            x = self.slice(lo, hi)
            if not bool(torch.isfinite(x).all()):
                first_bad_row(x.cpu().numpy(), lo, self.layout.order[lo:hi])
            torch.linalg.vector_norm(x, dim=1, out=out[lo:hi])
        return out.square_()


@dataclass
class Plan:
    block: int  # anchors per block
    chunk: int  # candidates per streamed chunk
    pilot: int  # pilot sample size


def pilot_size(n: int, cfg: NegativeConfig) -> int:
    """S ~ N^(2/3): balances the pilot's cost (~S per anchor) against the buffer's (~N/sqrt(S))."""
    return int(min(n, cfg.pilot_size, max(256, round(n ** (2.0 / 3.0)))))


def bracket_rank(need: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Sample rank (1-based) whose order statistic exceeds rank `need` of m w.h.p.; > s = all."""
    p = np.clip(need / np.maximum(m, 1), 0.0, 1.0)
    return np.maximum(np.ceil(s * p + Z * np.sqrt(s * p * (1.0 - p))).astype(np.int64) + 1, 1)


def buffer_cap(rank: int, m: int, s: int, sd: float = 6.0) -> int:
    """Buffer slots for the candidates below a sample order statistic of that rank (+sd sd)."""
    if s <= 0 or rank > s:
        return int(m)
    return int(min(m, math.ceil(m * (rank + sd * math.sqrt(rank)) / (s + 1)) + 16))


def requirements(cfg: NegativeConfig, m: np.ndarray, t: np.ndarray, kk: np.ndarray):
    """Ranks (from the bottom, from the top) whose candidates must be buffered; None = extreme."""
    if cfg.trim == "range":
        need = np.minimum(m, range_extra(cfg.k))
        return {"similar": (need, None), "dissimilar": (None, need)}.get(cfg.variant, (None, None))
    return {"similar": (t + kk, None), "dissimilar": (None, t + kk)}.get(cfg.variant,
                                                                         (t + 1, t + 1))


def make_plan(n: int, d: int, n_anchors: int, cfg: NegativeConfig, device: torch.device) -> Plan:
    """Block size such that the working set stays within max_block_mb (see module docstring)."""
    chunk, s = min(n, CHUNK), pilot_size(n, cfg)
    m = np.array([n])
    t = trim_count(m, cfg.interval)
    kk = np.minimum(cfg.k, m - 2 * t)
    caps = [buffer_cap(int(bracket_rank(r, m, np.array([s]))[0]), n, s)
            for r in requirements(cfg, m, t, kk) if r is not None]
    fixed = (chunk + s) * d * 4 * (2 if device.type != "cpu" else 1)
    per_anchor = chunk * 6 + s * 13 + sum(caps) * 21 + cfg.k * d * 8 + 256
    budget = cfg.max_block_mb * 2**20
    block = int(min(MAX_ANCHORS, max(n_anchors, 1), (budget - fixed) // per_anchor))
    if block < 1:
        need = (fixed + per_anchor) / 2**20
        raise ValueError(f"max_block_mb={cfg.max_block_mb} is too small for N={n}, d={d}: "
                         f"one anchor needs {need:.1f} MB of working memory")
    return Plan(block, chunk, s)


class Side:
    """Candidates of each anchor beyond a pilot threshold, compacted into [B, width] (one end).

    The width starts at the expected count and grows (x1.5) up to `cap`; `fill` keeps the true
    count, so an overflow (fill > cap) is detected and the anchor redone from its full row."""

    def __init__(self, b: torch.Tensor, cap: int, top: bool, width: int):
        n = len(b)
        self.b, self.cap, self.top = b, cap, top  # b [B] threshold (s units)
        self.pad = -math.inf if top else math.inf
        width = max(1, min(cap, width))
        self.v = torch.full((n, width), self.pad, device=b.device)  # [B, width] values
        self.i = torch.full((n, width), -1, dtype=torch.long, device=b.device)  # positions
        self.fill = torch.zeros(n, dtype=torch.long, device=b.device)  # true count
        self._mask: np.ndarray | None = None  # CPU compare buffer, reused across chunks

    def _grow(self, need: int) -> None:
        width = min(self.cap, max(need, int(self.v.shape[1] * 1.5)))
        extra = width - self.v.shape[1]
        if extra > 0:
            n = len(self.b)
            self.v = torch.cat([self.v, self.v.new_full((n, extra), self.pad)], 1)
            self.i = torch.cat([self.i, self.i.new_full((n, extra), -1)], 1)

    def add(self, D: torch.Tensor, c0: int) -> None:
        """Compact the entries of chunk D [B, C] (candidates c0...) beyond the threshold."""
        if D.device.type == "cpu":
            return self._add_numpy(D, c0)
        mask = D >= self.b[:, None] if self.top else D <= self.b[:, None]
        li = mask.view(-1).nonzero().squeeze(1)  # flat, row-major: grouped by anchor
        rr = li // D.shape[1]
        cnt = torch.bincount(rr, minlength=len(self.b))
        width = self._reserve(self.fill + cnt)
        # slot of entry j of row r: fill[r] + (j - first entry of r); flat = r * width + slot
        flat = torch.arange(len(li), device=D.device) + (self.fill - cnt.cumsum(0) + cnt)[rr]
        self._store(self.v.view(-1), self.i.view(-1), flat + rr * width, rr, width,
                    D.view(-1)[li], li - rr * D.shape[1] + c0)
        self.fill += cnt

    def _add_numpy(self, D: torch.Tensor, c0: int) -> None:
        """`add` on CPU in numpy, whose compare, nonzero and index arithmetic take 3.4 ms for a
        512 x 2048 chunk against torch's 5 ms: about a tenth of the chunk's product saved."""
        B, C = D.shape
        if self._mask is None or self._mask.size < D.numel():
            self._mask = np.empty(D.numel(), dtype=bool)
        mask = self._mask[:D.numel()].reshape(B, C)
        (np.greater_equal if self.top else np.less_equal)(D.numpy(), self.b.numpy()[:, None],
                                                          out=mask)
        cnt = np.count_nonzero(mask, axis=1)
        li = np.flatnonzero(mask)  # row-major: grouped by anchor
        rr = np.repeat(np.arange(B), cnt)
        fill = self.fill.numpy()
        width = self._reserve(self.fill + torch.from_numpy(cnt))
        slot = np.arange(len(li)) - np.repeat(np.cumsum(cnt) - cnt - fill, cnt)
        self._store(self.v.numpy().reshape(-1), self.i.numpy().reshape(-1), rr * width + slot, rr,
                    width, D.numpy().reshape(-1)[li], li - rr * C + c0)
        fill += cnt

    def _reserve(self, new_fill: torch.Tensor) -> int:
        """Widen the buffers (up to cap) for the new fill counts -> the width."""
        if int(new_fill.max()) > self.v.shape[1]:
            self._grow(int(new_fill.max()))
        return self.v.shape[1]

    @staticmethod
    def _store(v_flat, i_flat, flat, rr, width: int, vals, cols) -> None:
        """Write values and positions at flat slots; beyond a full row (overflow) nothing is
        written, while fill still records the true count (the anchor is redone)."""
        keep = flat < (rr + 1) * width
        if not bool(keep.all()):
            flat, vals, cols = flat[keep], vals[keep], cols[keep]
        v_flat[flat] = vals
        i_flat[flat] = cols

    def trim(self) -> None:
        """Drop the columns no row filled (the buffers grow by 1.5x steps), so that selection
        scans only the filled width."""
        width = max(1, min(self.v.shape[1], int(self.fill.max())))
        self.v, self.i = self.v[:, :width], self.i[:, :width]

    def bottom_view(self) -> torch.Tensor:
        """Values oriented so that the wanted end is the smallest (padding +inf)."""
        return -self.v if self.top else self.v


def kth_smallest(v: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """[B, L], [B] 1-based ranks -> [B] the rank-th smallest of each row (ranks clamped to L).
    On CPU numpy's introselect (np.partition) is about 8x faster than torch.kthvalue."""
    ranks = ranks.clamp(1, v.shape[1])
    out = torch.empty(len(v), device=v.device)
    for r in torch.unique(ranks).tolist():
        rows = (ranks == r).nonzero(as_tuple=True)[0]
        part = v if len(rows) == len(v) else v[rows]
        if v.device.type == "cpu":
            out[rows] = torch.from_numpy(np.partition(part.numpy(), int(r) - 1, axis=1)[:, int(r) - 1])
        else:
            out[rows] = part.kthvalue(int(r), dim=1).values
    return out


def smallest(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest of each row of x [B, L], ascending -> values, column indices [B, k].
    On CPU, numpy's argpartition and a sort of the k take about half of torch.topk's time for
    k << L (equal by L ~ 5000); elsewhere torch.topk."""
    if x.device.type != "cpu" or k >= x.shape[1]:
        return x.topk(k, dim=1, largest=False, sorted=True)
    xn = x.numpy()
    idx = np.argpartition(xn, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(xn, idx, 1)
    order = np.argsort(vals, axis=1, kind="stable")
    return (torch.from_numpy(np.take_along_axis(vals, order, 1)),
            torch.from_numpy(np.take_along_axis(idx, order, 1)))


def sample_order_stat(pilot: torch.Tensor, ranks: np.ndarray, top: bool) -> torch.Tensor:
    """[B, S] pilot (NaN = excluded), [B] 1-based ranks from the bottom (top) -> [B] values."""
    view = (-pilot if top else pilot).nan_to_num(nan=math.inf)
    ranks = np.maximum(ranks, 1)
    vals = smallest(view, int(ranks.max()))[0]
    vals = vals.gather(1, torch.from_numpy(ranks - 1).to(vals.device)[:, None])[:, 0]
    return -vals if top else vals


def pick_smallest(v, idx, lo, hi, k, k_max: int):
    """The k smallest values in [lo, hi] per row of v [B, L] -> positions, values, mask [B, k_max]."""
    inside = (v >= lo[:, None]) & (v <= hi[:, None])
    w = torch.where(inside, v, torch.full_like(v, math.inf))
    kk = min(k_max, w.shape[1])
    vals, j = smallest(w, kk)
    valid = torch.isfinite(vals) & (torch.arange(kk, device=v.device)[None] < k[:, None])
    return idx.gather(1, j), vals, valid


def pick_random(pilot: torch.Tensor, pos: torch.Tensor, lo, hi, k, k_max: int, gen):
    """Up to k pilot candidates in [lo, hi] per row, uniformly -> positions, values, mask [B, k_max],
    eligible count [B]."""
    eligible = (pilot >= lo[:, None]) & (pilot <= hi[:, None])  # NaN (own video) never eligible
    keys = torch.rand(pilot.shape, generator=gen).to(pilot.device)
    keys = torch.where(eligible, keys, torch.full_like(keys, -1.0))
    kk = min(k_max, keys.shape[1])
    vals, j = keys.topk(kk, dim=1)
    valid = (vals >= 0) & (torch.arange(kk, device=pilot.device)[None] < k[:, None])
    return pos[j], pilot.gather(1, j), valid, eligible.sum(1)


@dataclass
class BlockState:
    """What a pass over all candidates left for one block of anchors (s units)."""

    m: torch.Tensor  # [B] candidates per anchor
    t: torch.Tensor  # [B] trimmed per end (quantile)
    kk: torch.Tensor  # [B] wanted per anchor
    an2: torch.Tensor  # [B] ||a||^2
    smin: torch.Tensor  # [B] min over candidates
    smax: torch.Tensor  # [B] max
    bottom: Side | None
    top: Side | None
    pilot: torch.Tensor  # [B, S] pilot values (NaN = own video)
    pilot_pos: torch.Tensor  # [S] sorted positions of the pilot
    exhaustive: bool  # pilot = every candidate


def _side_ok(side: Side | None, need) -> torch.Tensor | bool:
    if side is None:
        return True
    return (side.fill >= need) & (side.fill >= 1) & (side.fill <= side.cap)


def select(st: BlockState, cfg: NegativeConfig, gen: torch.Generator):
    """Apply the rules to a block -> positions, values (s units), valid [B, K]; ok [B]."""
    k = cfg.k
    if cfg.trim == "quantile":
        lo = kth_smallest(st.bottom.bottom_view(), st.t + 1) if st.bottom else None
        hi = -kth_smallest(st.top.bottom_view(), st.t + 1) if st.top else None
        if cfg.variant == "similar":
            pos, val, valid = pick_smallest(st.bottom.v, st.bottom.i, lo,
                                            torch.full_like(lo, FMAX), st.kk, k)
            return pos, val, valid, _side_ok(st.bottom, st.t + st.kk)
        if cfg.variant == "dissimilar":
            pos, val, valid = pick_smallest(-st.top.v, st.top.i, -hi, torch.full_like(hi, FMAX),
                                            st.kk, k)
            return pos, -val, valid, _side_ok(st.top, st.t + st.kk)
        pos, val, valid, n_ok = pick_random(st.pilot, st.pilot_pos, lo, hi, st.kk, k, gen)
        ok = _side_ok(st.bottom, st.t + 1) & _side_ok(st.top, st.t + 1)
        return pos, val, valid, ok & ((n_ok >= st.kk) | st.exhaustive)
    lo, hi = _range_s(st, cfg.interval)
    if cfg.variant == "similar":
        pos, val, valid = pick_smallest(st.bottom.v, st.bottom.i, lo, hi, st.kk, k)
        covered = (st.bottom.b >= hi) | (st.bottom.fill >= st.m)
        return pos, val, valid, _range_ok(st.bottom, valid, st.kk, covered)
    if cfg.variant == "dissimilar":
        pos, val, valid = pick_smallest(-st.top.v, st.top.i, -hi, -lo, st.kk, k)
        covered = (st.top.b <= lo) | (st.top.fill >= st.m)
        return pos, -val, valid, _range_ok(st.top, valid, st.kk, covered)
    pos, val, valid, n_ok = pick_random(st.pilot, st.pilot_pos, lo, hi, st.kk, k, gen)
    return pos, val, valid, (n_ok >= st.kk) | st.exhaustive


def _range_ok(side: Side, valid, kk, covered) -> torch.Tensor:
    return (side.fill >= 1) & (side.fill <= side.cap) & ((valid.sum(1) >= kk) | covered)


def _range_s(st: BlockState, interval: float):
    """Range-trimming bounds converted to s units, clamped to [smin, smax]."""
    dmin = (st.smin + st.an2).clamp_min(0).double().sqrt()
    dmax = (st.smax + st.an2).clamp_min(0).double().sqrt()
    lo, hi = range_bounds(dmin, dmax, interval)
    lo = (lo.square() - st.an2.double()).float()
    hi = (hi.square() - st.an2.double()).float()
    return torch.maximum(torch.minimum(lo, st.smax), st.smin), \
        torch.minimum(torch.maximum(hi, st.smin), st.smax)


class ExactBuilder:
    """Streams anchor blocks against candidate chunks; see the module docstring."""

    def __init__(self, embeddings: np.ndarray, vid: np.ndarray, cfg: NegativeConfig):
        self.cfg, self.emb = cfg, embeddings
        self.device = resolve_device(cfg.device)
        self.layout = Layout.of(vid)
        self.rows = Rows(embeddings, self.layout, self.device, cfg.device_cache_mb)
        self.cn2 = self.rows.squared_norms()  # [N]
        self.vid_t = torch.from_numpy(self.layout.vid).to(self.device)
        self.n = len(vid)
        self.stats = {"blocks": 0, "anchors": 0, "fallback_anchors": 0, "block_size": 0}

    def run(self, anchor_rows: np.ndarray, progress: bool) -> pd.DataFrame:
        return self.table(anchor_rows, progress).frame()

    def table(self, anchor_rows: np.ndarray, progress: bool,
              partition_rows: int | None = None) -> NegativeTable:
        """The table of `anchor_rows`, spilled to part files past `partition_rows` rows."""
        pos_all = self.layout.positions(anchor_rows)
        pos_all = pos_all[self.layout.m[pos_all] > 0]
        plan = make_plan(self.n, self.emb.shape[1], len(pos_all), self.cfg, self.device)
        parts = TableParts(self.cfg, partition_rows)
        self.stats["block_size"] = plan.block
        with tqdm(total=len(pos_all), unit="anchor", disable=not progress,
                  desc=f"negatives ({self.cfg.variant}, exact)") as bar:
            for i, lo in enumerate(range(0, len(pos_all), plan.block)):
                pos = pos_all[lo:lo + plan.block]
                self._block(pos, plan, parts, i)
                bar.update(len(pos))
        return parts.result()

    def _block(self, pos: np.ndarray, plan: Plan, parts: TableParts, index: int) -> None:
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + index)
        A = self.rows.take(pos)  # [B, d]
        st = self._pass(A, pos, plan, gen)
        p, val, valid, ok = select(st, self.cfg, gen)
        smin, smax = st.smin, st.smax
        self.stats["blocks"] += 1
        self.stats["anchors"] += len(pos)
        if not isinstance(ok, bool) and not bool(ok.all()):
            bad = (~ok).nonzero(as_tuple=True)[0]
            self.stats["fallback_anchors"] += len(bad)
            redo = self._fallback(A[bad], pos[bad.cpu().numpy()], gen)
            p, val, valid, smin, smax = (x.clone() for x in (p, val, valid, smin, smax))
            for x, y in zip((p, val, valid, smin, smax), redo):
                x[bad] = y
        self._emit(parts, pos, st.an2, p, val, valid, smin, smax)

    def _emit(self, parts, pos, an2, p, val, valid, smin, smax) -> None:
        """s units -> raw distances sqrt(s + ||a||^2); sorted positions -> row ids."""
        def dist(s: torch.Tensor) -> np.ndarray:  # [B, K] or [B] s units -> raw distances
            a2 = an2.double().reshape(-1, *([1] * (s.dim() - 1)))
            return (s.double() + a2).clamp_min(0).sqrt().cpu().numpy()

        valid = valid.cpu().numpy()
        cand = self.layout.order[np.where(valid, p.cpu().numpy(), 0)]
        parts.add(self.layout.order[pos], cand, valid, dist(val), dist(smin), dist(smax))

    def _chunks(self, A: torch.Tensor, pos: np.ndarray, chunk: int):
        """Yield (c0, s [B, C], own rows, own cols) over all candidate chunks. s lives in one
        buffer reused for every chunk (the caller must not keep it)."""
        own_r, own_c = (torch.from_numpy(x).to(self.device) for x in self.layout.own_pairs(pos))
        buf = torch.empty(len(pos) * chunk, device=self.device)
        for c0 in range(0, self.n, chunk):
            c1 = min(self.n, c0 + chunk)
            D = buf[:len(pos) * (c1 - c0)].view(len(pos), c1 - c0)
            torch.addmm(self.cn2[c0:c1][None], A, self.rows.slice(c0, c1).T, alpha=-2.0, out=D)
            sel = (own_c >= c0) & (own_c < c1)
            yield c0, D, own_r[sel], own_c[sel] - c0

    def _pilot(self, A, pos, plan, gen):
        """[B, S] pilot values (NaN = own video), [S] positions, exhaustive?"""
        if plan.pilot >= self.n:
            P = torch.arange(self.n)
        else:
            P = torch.randperm(self.n, generator=gen)[:plan.pilot].sort().values
        P = P.to(self.device)
        D = torch.addmm(self.cn2[P][None], A, self.rows.take(P.cpu().numpy()).T, alpha=-2.0)
        own = self.vid_t[P][None, :] == self.vid_t[torch.from_numpy(pos).to(self.device)][:, None]
        return D.masked_fill(own, math.nan), P, plan.pilot >= self.n

    def _sides(self, pilot, m, need_b, need_t):
        """Pilot thresholds and buffers for the ends whose ranks are needed."""
        s_valid = (~torch.isnan(pilot)).sum(1).cpu().numpy()
        sides = []
        for need, top in ((need_b, False), (need_t, True)):
            if need is None:
                sides.append(None)
                continue
            r = bracket_rank(need, m, s_valid)
            b = sample_order_stat(pilot, np.minimum(r, s_valid), top)
            b = torch.where(torch.from_numpy(r > s_valid).to(b.device),
                            torch.full_like(b, -FMAX if top else FMAX), b)
            cap = max(buffer_cap(int(ri), int(mi), int(si)) for ri, mi, si in
                      zip(*np.unique(np.stack([r, m, s_valid]), axis=1)))
            width = max(buffer_cap(int(ri), int(mi), int(si), 4.0) for ri, mi, si in
                        zip(*np.unique(np.stack([r, m, s_valid]), axis=1)))
            sides.append(Side(b, cap, top, width))
        return sides

    def _pass(self, A, pos, plan, gen) -> BlockState:
        cfg, m = self.cfg, self.layout.m[pos]
        t = trim_count(m, cfg.interval)
        kk = np.minimum(cfg.k, m - 2 * t)
        need_b, need_t = requirements(cfg, m, t, kk)
        pilot, P, exhaustive = self._pilot(A, pos, plan, gen)
        bottom, top = self._sides(pilot, m, need_b, need_t)
        # An end with a buffer gets its extreme from the buffer (it holds every value beyond the
        # threshold, so the extreme whenever fill >= 1; fill = 0 or overflow fails verification
        # and the anchor is redone): only an end without one costs a reduction pass per chunk.
        smin = torch.full((len(pos),), math.inf, device=self.device)
        smax = torch.full((len(pos),), -math.inf, device=self.device)
        for c0, D, r, c in self._chunks(A, pos, plan.chunk):
            for side, high in ((top, True), (bottom, False)):
                D[r, c] = -math.inf if high else math.inf  # own video: no extreme, not buffered
                if side is not None:
                    side.add(D, c0)
                elif high:
                    torch.maximum(smax, D.amax(1), out=smax)
                else:
                    torch.minimum(smin, D.amin(1), out=smin)
        for side in (top, bottom):
            if side is not None:
                side.trim()
        if top is not None:
            smax = top.v.amax(1)
        if bottom is not None:
            smin = bottom.v.amin(1)
        tt = self._long
        return BlockState(tt(m), tt(t), tt(kk), self.cn2[tt(pos)], smin, smax, bottom, top,
                          pilot, P, exhaustive)

    def _long(self, x) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x, dtype=np.int64)).to(self.device)

    def _fallback(self, A, pos, gen):
        """Exact selection from full rows of N distances, in sub-blocks within the budget."""
        per = max(1, int(self.cfg.max_block_mb * 2**20 // (self.n * 4 * 4)))
        outs = [self._full_rows(A[i:i + per], pos[i:i + per], gen)
                for i in range(0, len(pos), per)]
        return tuple(torch.cat(x) for x in zip(*outs))

    def _full_rows(self, A, pos, gen):
        full = torch.empty(len(pos), self.n, device=self.device)  # [b, N]
        own = torch.zeros(len(pos), self.n, dtype=torch.bool, device=self.device)
        for c0, D, r, c in self._chunks(A, pos, CHUNK):
            full[:, c0:c0 + D.shape[1]] = D
            own[r, c + c0] = True
        m = self.layout.m[pos]
        t = trim_count(m, self.cfg.interval)
        kk = np.minimum(self.cfg.k, m - 2 * t)
        tt = self._long
        sides = []
        for top in (False, True):
            side = Side(torch.full((len(pos),), -FMAX if top else FMAX, device=self.device), 0, top, 1)
            side.v = full.masked_fill(own, -math.inf if top else math.inf)
            side.i = torch.arange(self.n, device=self.device).expand(len(pos), -1)
            side.fill, side.cap = tt(m), self.n
            sides.append(side)
        st = BlockState(tt(m), tt(t), tt(kk), self.cn2[tt(pos)], sides[0].v.amin(1),
                        sides[1].v.amax(1), sides[0], sides[1], full.masked_fill(own, math.nan),
                        torch.arange(self.n, device=self.device), True)
        p, val, valid, _ = select(st, self.cfg, gen)
        return p, val, valid, st.smin, st.smax


def exact_table(embeddings: np.ndarray, vid: np.ndarray, cfg: NegativeConfig, progress: bool,
                anchor_rows: np.ndarray, partition_rows: int | None = None) -> NegativeTable:
    return ExactBuilder(embeddings, vid, cfg).table(anchor_rows, progress, partition_rows)

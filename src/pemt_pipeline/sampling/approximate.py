"""Approximate negative table with faiss nearest-neighbour indexes (NegativeConfig.mode="approximate").

Each step of the exact rules (`table.py`) is approximated as follows, per batch of anchors:

* trim="range", similar (the variant approximate mode is built for):
  - d_min: the nearest other-video candidate found by an L2 index (IVF-Flat, `nlist` lists,
    default ~4*sqrt(N), `n_probe` visited, k-means of 10 iterations on `train_size` vectors;
    index="auto" searches exhaustively below 50k clips).
  - d_max: the maximum over the *extreme set*, the `extreme_per_anchor` farthest candidates of
    `extreme_anchors` random anchors found by exact streamed products. Farthest neighbours are a few
    global outliers shared by most anchors, so this small set (about 1.5k-6k clips) gives the exact
    d_max for >99% of anchors; a farthest-neighbour index did not (off by 8% of the range at 100k),
    and since the cut d_min + alpha*(d_max - d_min) sits where candidates are dense, every 1% of
    d_max error moves it by many ranks (hundreds at 1M clips).
  - picks: the index is asked for K * oversample + (largest video's clips) neighbours; own-video
    ones are dropped, then the cut, and the first K kept remain. The cut's rank grows with N, so
    anchors left with fewer than K are searched again 4x deeper, probing 2x more lists, until they
    have K or the search is exhaustive; the next batch starts at the depth that served at least
    half of the last one.
* trim="range", dissimilar: the same ends, and the K farthest candidates from an inner-product
  index over c' = [c, ||c||^2 / lam] queried with q' = [-2a, lam] (<q', c'> = ||a - c||^2 - ||a||^2),
  default ~sqrt(N) lists. Farthest-neighbour search by inner product needs many more lists visited
  than the L2 search: recall 0.43 at n_probe=16, 0.96 at n_probe=128 (100k clips).
* random: K candidates drawn uniformly from a uniform sample of `sample_size` candidates inside the
  interval estimated from that sample.
* trim="quantile", similar/dissimilar: a quantile cut at rank t ~ M*(1-interval)/2 (25k of 1M
  candidates) cannot be located by a neighbour search without counting every nearer candidate,
  and a sample places it only to within about M*sqrt(p(1-p)/S) ranks. These variants therefore
  take the K nearest (farthest) *sample* members inside the sample's quantile cut: the right
  distribution (candidates just beyond the cut), not the exact table's identities. Use trim="range"
  or exact mode when the exact candidates matter.

Memory: O(N*d), not bounded by max_block_mb: the index's own copy of the vectors (IVF-Flat:
N*(4d + 8) bytes, 20.6 GB at 10M x 512; index="ivf_fp16" halves it, its distances then come from
float16-rounded vectors; N*(d+1) floats more for dissimilar's index). The queries read the
embeddings as they are (a memory-mapped .npy stays mapped; other arrays are copied to float32 once);
query batches and the extreme-set pass are sized by max_block_mb. faiss runs on CPU; the products
use torch on the configured device.

Measured (benchmarks/bench_negatives.py, clustered synthetic set, K=32, n_probe=16, similar/range):
recall@K of the exact table 1.0 at 10k (flat), 0.997 at 100k, 0.9994 at 1M (1000 anchors); the
figures of the last full run are in the README.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pemt_pipeline.devices import resolve_device

from .blockwise import pick_random, pick_smallest
from .config import FLAT_BELOW, NegativeConfig, first_bad_row
from .table import TableParts, range_bounds, trim_count
from .tablefile import NegativeTable

FAISS_REQUIREMENT = "faiss-cpu==1.15.1"


def import_faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"approximate mode needs faiss: pip install '{FAISS_REQUIREMENT}'") from exc
    return faiss


def load_matrix(embeddings: np.ndarray) -> np.ndarray:
    """The embeddings as one C-contiguous float32 array: the array itself when it already is one (a
    read-only memmap stays a memmap, read as needed), else a copy; checked finite in 64 MB chunks."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    step = max(1, (64 << 20) // (4 * max(1, x.shape[1])))
    for lo in range(0, len(x), step):
        first_bad_row(x[lo:lo + step], lo)
    return x


def auto_nlist(n: int, cfg: NegativeConfig, inner_product: bool) -> int:
    """About 4*sqrt(N) lists for the L2 index, sqrt(N) for the inner-product one (its probing by
    largest centroid product degrades with many small lists); at least 16 vectors a list."""
    per = 1.0 if inner_product else 4.0
    return int(cfg.nlist or max(1, min(round(per * math.sqrt(n)), n // 16)))


def make_index(faiss, n: int, dim: int, inner_product: bool, cfg: NegativeConfig):
    """An empty index for n vectors of dim: flat, IVF-Flat (index="ivf"; N*(4*dim + 8) bytes) or
    IVF with float16 codes (index="ivf_fp16"; N*(2*dim + 8) bytes, distances from the rounded
    vectors), L2 or inner-product metric. IVF ones need `train_index`."""
    metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
    nlist = auto_nlist(n, cfg, inner_product)
    flat = cfg.index == "flat" or (cfg.index == "auto" and n < FLAT_BELOW)
    if flat or nlist < 2:
        return faiss.IndexFlatIP(dim) if inner_product else faiss.IndexFlatL2(dim)
    quantizer = faiss.IndexFlatIP(dim) if inner_product else faiss.IndexFlatL2(dim)
    if cfg.index == "ivf_fp16":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, metric)
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
    index.cp.seed, index.cp.niter = int(cfg.seed), 10
    index.cp.min_points_per_centroid = 1  # k-means on train_size points, not 39 per list
    index.nprobe = int(min(cfg.n_probe, nlist))
    return index


def train_index(index, data: np.ndarray, cfg: NegativeConfig, rng: np.random.Generator,
                size: int | None = None) -> None:
    """k-means of an IVF index's coarse quantiser on a random sample of `size` rows of data
    (default max(train_size, 16*nlist)); nothing for a flat index."""
    if not hasattr(index, "nlist"):
        return
    n = len(data)
    size = max(cfg.train_size, 16 * index.nlist) if size is None else size
    take = rng.choice(n, size=min(n, size), replace=False)
    index.train(data[np.sort(take)])


def add_vectors(index, data: np.ndarray, lo: int = 0, hi: int | None = None) -> None:
    """Add rows [lo, hi) of data (ids continue from the index's count), 65536 at a time."""
    hi = len(data) if hi is None else hi
    for a in range(lo, hi, 65536):
        index.add(np.ascontiguousarray(data[a:min(hi, a + 65536)], dtype=np.float32))


def build_index(faiss, data: np.ndarray, inner_product: bool, cfg: NegativeConfig,
                rng: np.random.Generator):
    """A flat or IVF index (`make_index`) over data [N, D], trained and filled."""
    index = make_index(faiss, len(data), data.shape[1], inner_product, cfg)
    train_index(index, data, cfg, rng)
    add_vectors(index, data)
    return index


def far_augment(x: np.ndarray, lam: float) -> np.ndarray:
    """[N, d] -> [N, d+1] rows [c, ||c||^2 / lam] for the farthest-neighbour (MIPS) index."""
    sq = np.einsum("nd,nd->n", x, x, dtype=np.float64)
    return np.concatenate([x, (sq / lam)[:, None].astype(np.float32)], axis=1)


def far_scale(x: np.ndarray, rng: np.random.Generator) -> float:
    """lam such that ||c||^2 / lam spreads like one embedding coordinate (index quality only)."""
    s = x[rng.choice(len(x), size=min(len(x), 8192), replace=False)].astype(np.float64)
    spread = np.std((s * s).sum(1))
    return float(spread / max(np.sqrt(s.var(0).mean()), 1e-12)) if spread > 0 else 1.0


class ApproximateBuilder:
    def __init__(self, embeddings: np.ndarray, vid: np.ndarray, cfg: NegativeConfig):
        self.faiss = import_faiss()
        self.cfg, self.emb, self.vid = cfg, embeddings, vid
        self.x = load_matrix(embeddings)  # [N, d]
        self.n, self.d = self.x.shape
        self.device = resolve_device(cfg.device)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        _, inv, counts = np.unique(vid, return_inverse=True, return_counts=True)
        self.max_own = int(counts.max())
        self.m = self.n - counts[inv]  # [N] candidates per clip
        self.extreme = np.zeros(0, dtype=np.int64)  # row ids giving d_max (range trimming)
        self.indexes = self._indexes()
        self.level = 0  # where range searches start: the depth most anchors of the last batch needed

    def _indexes(self) -> dict:
        """Range trimming: an L2 index for the nearest candidates ("near"; d_min, and the picks of
        similar), plus for dissimilar an inner-product index on [c, ||c||^2/lam] for the farthest
        ("far"), and the extreme set for d_max. Nothing for quantile trimming or random."""
        if self.cfg.trim != "range" or self.cfg.variant == "random":
            return {}
        self.extreme = self._extreme_set()
        indexes = {"near": build_index(self.faiss, self.x, False, self.cfg, self.rng)}
        if self.cfg.variant == "dissimilar":
            self.lam = far_scale(self.x, self.rng)
            indexes["far"] = build_index(self.faiss, far_augment(self.x, self.lam), True, self.cfg,
                                         self.rng)
        return indexes

    def _extreme_set(self) -> np.ndarray:
        """Row ids of the extreme set: the union of the extreme_per_anchor farthest candidates of
        extreme_anchors random anchors, by exact products streamed over all clips.

        Farthest neighbours are few global outliers shared by many anchors (the far tail of
        ||c - a|| is ruled by ||c||'s spread, not by a), so the maximum over this small set is
        the exact d_max for nearly every anchor, which a farthest-neighbour index (inner product
        on [c, ||c||^2]) was not: its d_max was off by 8% of the range, moving the cut by
        hundreds of ranks at 1M clips."""
        s = min(self.n, self.cfg.extreme_anchors)
        t = min(self.n, self.cfg.extreme_per_anchor)
        rows = np.sort(self.rng.choice(self.n, s, replace=False))
        a = torch.from_numpy(self.x[rows]).to(self.device)  # [S, d]
        best = torch.full((s, 0), -math.inf, device=self.device)
        best_ids = torch.zeros((s, 0), dtype=torch.int64, device=self.device)
        step = max(t, int(self.cfg.max_block_mb * 2**20 // (s * 16)))
        for lo in range(0, self.n, step):
            d = self._dist(a, rows, np.arange(lo, min(self.n, lo + step)))  # [S, C], NaN own
            d = torch.cat([best, d.nan_to_num(nan=-math.inf)], 1)
            ids = torch.cat([best_ids, torch.arange(lo, lo + d.shape[1] - best.shape[1],
                                                    device=self.device).expand(s, -1)], 1)
            best, j = d.topk(min(t, d.shape[1]), dim=1)
            best_ids = ids.gather(1, j)
        return torch.unique(best_ids[torch.isfinite(best)]).cpu().numpy()

    def _dist(self, a: torch.Tensor, rows: np.ndarray, ids: np.ndarray) -> torch.Tensor:
        """l2 distances [B, C] of anchors a [B, d] (row ids rows) to clips ids; NaN = own video."""
        c = torch.from_numpy(self.x[ids]).to(self.device)
        d2 = a.square().sum(1)[:, None] + c.square().sum(1)[None] - 2.0 * a @ c.T
        own = torch.from_numpy(self.vid[rows][:, None] == self.vid[ids][None]).to(self.device)
        return d2.clamp_min(0).sqrt().masked_fill(own, math.nan)

    def batch_size(self) -> int:
        s = min(self.n, self.cfg.sample_size)
        per = (s + len(self.extreme)) * 16 + self._depth(self.level)[0] * 32 \
            + self.cfg.k * self.d * 8 + 256
        return int(max(1, min(8192, self.cfg.max_block_mb * 2**20 // per)))

    def k_search(self) -> int:
        return int(min(self.n, self.cfg.k * self.cfg.oversample + self.max_own))

    def _depth(self, level: int) -> tuple[int, int]:
        """(neighbours asked, lists probed) of a search `level` steps deeper than the first."""
        return min(self.n, self.k_search() * 4**level), self.cfg.n_probe * 2**level

    def run(self, anchor_rows: np.ndarray, progress: bool) -> pd.DataFrame:
        return self.table(anchor_rows, progress).frame()

    def table(self, anchor_rows: np.ndarray, progress: bool,
              partition_rows: int | None = None) -> NegativeTable:
        """The table of `anchor_rows`, spilled to part files past `partition_rows` rows."""
        anchor_rows = anchor_rows[self.m[anchor_rows] > 0]
        parts, lo = TableParts(self.cfg, partition_rows), 0
        with tqdm(total=len(anchor_rows), unit="anchor", disable=not progress,
                  desc=f"negatives ({self.cfg.variant}, approximate)") as bar:
            while lo < len(anchor_rows):
                rows = anchor_rows[lo:lo + self.batch_size()]
                self._batch(rows, parts)
                lo += len(rows)
                bar.update(len(rows))
        return parts.result()

    def _sample(self, a: torch.Tensor, rows: np.ndarray):
        """[B, S] sample distances (NaN = own video), sample row ids."""
        s = min(self.n, self.cfg.sample_size)
        ids = np.arange(self.n) if s >= self.n else np.sort(self.rng.choice(self.n, s, replace=False))
        return self._dist(a, rows, ids), torch.from_numpy(ids).to(self.device)

    def _batch(self, rows: np.ndarray, parts: TableParts) -> None:
        cfg = self.cfg
        if self.indexes:
            return self._emit(parts, rows, *self._range_batch(rows))
        a = torch.from_numpy(self.x[rows]).to(self.device)  # [B, d]
        sample, ids = self._sample(a, rows)
        dmin = sample.nan_to_num(nan=math.inf).amin(1).double()
        dmax = sample.nan_to_num(nan=-math.inf).amax(1).double()
        k = torch.full((len(rows),), cfg.k, device=self.device)
        if cfg.trim == "quantile":
            lo, hi = self._sample_quantiles(sample)
        else:
            lo, hi = range_bounds(dmin, dmax, cfg.interval)
        if cfg.variant == "random":
            pos, dist, valid, _ = pick_random(sample, ids, lo.float(), hi.float(), k, cfg.k,
                                              self.gen)
        else:
            pos, dist, valid = self._pick(sample, ids.expand(len(rows), -1), lo, hi, k)
        self._emit(parts, rows, pos, dist, valid, dmin, dmax)

    def _range_batch(self, rows: np.ndarray):
        """trim="range", similar/dissimilar: d_min from the near index, d_max from the extreme set,
        then the K nearest (farthest) candidates inside the cut, searched deeper where needed."""
        want = "near" if self.cfg.variant == "similar" else "far"
        level = self.level
        found, found_ids, full = self._search(rows, want, *self._depth(level))
        nearest = found if want == "near" else self._search(rows, "near", *self._depth(0))[0]
        dmin = nearest.nan_to_num(nan=math.inf).amin(1).double()
        a = torch.from_numpy(self.x[rows]).to(self.device)
        dmax = self._dist(a, rows, self.extreme).nan_to_num(nan=-math.inf).amax(1).double()
        if want == "far":
            dmax = torch.maximum(dmax, found.nan_to_num(nan=-math.inf).amax(1).double())
        lo, hi = range_bounds(dmin, dmax, self.cfg.interval)
        k = torch.full((len(rows),), self.cfg.k, device=self.device)
        pos, dist, valid = self._pick(found, found_ids, lo, hi, k)
        short = torch.nonzero((valid.sum(1) < self.cfg.k) & full)[:, 0]
        done_at = {level: len(rows) - len(short)}
        while len(short):
            level += 1
            depth, probe = self._depth(level)
            step = max(1, int(self.cfg.max_block_mb * 2**20 // (depth * 32)))
            still = []
            for s in range(0, len(short), step):
                sub = short[s:s + step]
                f, fid, full = self._search(rows[sub.cpu().numpy()], want, depth, probe)
                pos[sub], dist[sub], valid[sub] = self._pick(f, fid, lo[sub], hi[sub], k[sub])
                still.append(sub[(valid[sub].sum(1) < self.cfg.k) & full])
            short = torch.cat(still)
            done_at[level] = len(rows) - len(short)
        # start the next batch where at least half of this one was complete (speed only)
        self.level = min(lv for lv, done in done_at.items() if 2 * done >= len(rows))
        return pos, dist, valid, dmin, dmax

    def _pick(self, dist, ids, lo, hi, k):
        """The K nearest (similar) or farthest (dissimilar) of dist [B, L] inside [lo, hi]."""
        dist = dist.nan_to_num(nan=math.inf if self.cfg.variant == "similar" else -math.inf)
        if self.cfg.variant == "similar":
            return pick_smallest(dist, ids, lo.float(), hi.float(), k, self.cfg.k)
        pos, val, valid = pick_smallest(-dist, ids, -hi.float(), -lo.float(), k, self.cfg.k)
        return pos, -val, valid

    def _sample_quantiles(self, sample: torch.Tensor):
        """Sample order statistics at t_s = floor(S_valid * (1 - interval) / 2) from each end."""
        s_valid = (~torch.isnan(sample)).sum(1)
        t = torch.from_numpy(trim_count(s_valid.cpu().numpy(), self.cfg.interval)).to(sample.device)
        ordered = sample.nan_to_num(nan=math.inf).sort(dim=1).values
        lo = ordered.gather(1, t[:, None])[:, 0]
        hi = ordered.gather(1, (s_valid - 1 - t).clamp_min(0)[:, None])[:, 0]
        return lo.double(), hi.double()

    def _search(self, rows: np.ndarray, which: str, k: int, n_probe: int):
        """The k nearest ("near") or farthest ("far") neighbours, visiting n_probe lists ->
        distances [B, k] (NaN for own video / missing), row ids, and whether a deeper search could
        find more (k returned and fewer than all candidates asked for, or lists left unvisited)."""
        q = self.x[rows]
        index = self.indexes[which]
        nlist = getattr(index, "nlist", 1)
        params = self.faiss.SearchParametersIVF(nprobe=int(min(n_probe, nlist))) if nlist > 1 else None
        if which == "near":
            score, ids = index.search(q, k, params=params)
            d2 = score.astype(np.float64)
        else:
            qa = np.concatenate([-2.0 * q, np.full((len(q), 1), self.lam, np.float32)], axis=1)
            score, ids = index.search(np.ascontiguousarray(qa, dtype=np.float32), k, params=params)
            d2 = score.astype(np.float64) + np.einsum("nd,nd->n", q, q, dtype=np.float64)[:, None]
        drop = (ids < 0) | (self.vid[np.maximum(ids, 0)] == self.vid[rows][:, None])
        dist = np.where(drop, np.nan, np.sqrt(np.maximum(d2, 0.0)))
        more = ((ids[:, -1] >= 0) & (k < self.n)) | (n_probe < nlist)
        return (torch.from_numpy(dist).float().to(self.device),
                torch.from_numpy(np.maximum(ids, 0)).to(self.device),
                torch.from_numpy(more).to(self.device))

    def _emit(self, parts, rows, pos, dist, valid, dmin, dmax) -> None:
        valid = valid.cpu().numpy()
        cand = np.where(valid, pos.cpu().numpy(), 0)
        parts.add(rows, cand, valid, dist.double().cpu().numpy(), dmin.cpu().numpy(),
                  dmax.cpu().numpy())


def approximate_table(embeddings: np.ndarray, vid: np.ndarray, cfg: NegativeConfig,
                      progress: bool, anchor_rows: np.ndarray,
                      partition_rows: int | None = None) -> NegativeTable:
    return ApproximateBuilder(embeddings, vid, cfg).table(anchor_rows, progress, partition_rows)

"""Benchmark the content-aware negative table: build time, peak memory, floor, recall.

    python benchmarks/bench_negatives.py [--sizes 10000,100000,1000000] [--quick] [--out PATH]
                                         [--threads T] [--exact-budget-s 900] [--k 32]

Synthetic embeddings (d = 512, written to a memory-mapped .npy so exact mode streams them):
700 class centres, videos of 10 clips around them (a CNN-like clustered space). Per size N:

  exact/quantile   the default table (similar, quantile trimming), timed against the bare matrix
                   products it streams (same blocks and chunks, nothing else: the arithmetic floor)
  exact/range      the exact table approximate mode reproduces
  approx/range     faiss IVF-Flat: speed-up over exact/range and recall@K of its (anchor,
                   candidate) pairs against exact/range
  approx/quantile  sample-based (see approximate.py): time and recall against exact/quantile
  naive            full N x N distance matrix + row sorts (reference_table), while it fits in RAM

An exact run whose full time would exceed --exact-budget-s is measured on a probe of whole
anchor blocks (every block costs the same: B anchors x all N candidates) and extrapolated; the
row says so (--probe-blocks for exact/quantile; exact/range probes about as many anchors, in
whole blocks of its own, at least one).

Above --approx-probe-above clips (default 2M: at 10M one core needs ~27 min only to assign the
vectors to their IVF lists) approximate mode is measured by parts and extrapolated: the
embeddings' finiteness pass and the extreme set (exact, all N); k-means on the configured
max(train_size, 16*nlist) vectors (--approx-train-points fewer: extrapolated linearly, but a
quantiser trained on few points per list has unbalanced lists, which inflates the search);
adding a fill of the vectors, 2.5% or ~20 a list if more (add time ~ N, extrapolated); the
search of --approx-probe-anchors anchors
against that index, plus (1/fill - 1) times its IVF distances (faiss's ndis count) at the cost
of one distance, measured as the slope of index.search over 1x and 32x n_probe lists (a full
index has 1/fill times longer lists; the coarse quantiser costs the same). Not captured: deeper
searches that a full index's denser neighbourhoods may need. Both IVF-Flat and ivf_fp16
(same trained quantiser) are measured; index memory per vector from the RSS growth while adding
(and by arithmetic). Recall needs the full index: not measured there. --approx-probe-also runs
the probe at the smaller sizes too, beside the full build, to check the extrapolation.

--table-rows R: the table's own costs at R rows (K=32 per anchor): building it in part files
(TableSink) and writing the folder, reading it back, indexing it in NegativeSampler; times and
peak memory, to be scaled linearly to 320M rows.

Peak memory: the process's anonymous RSS (not the memory-mapped embeddings), sampled every 5 ms,
minus its value before the build, each case in a fresh process; output_mb
is the table's own size (anchors x K x 24 bytes), so peak - output is the working set. Threads:
--threads per case (default 1: on a shared 2-core machine two OpenMP threads stall on each
other's barriers whenever another job runs; exact mode and its floor always share the setting).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pemt_pipeline.atomic import write_text  # noqa: E402
from pemt_pipeline.profiling import PeakMemory, rss_anon_mb  # noqa: E402 (after the sys.path line)
from pemt_pipeline.sampling import NegativeConfig, NegativeSampler, read_table, reference_table  # noqa: E402
from pemt_pipeline.sampling.approximate import (ApproximateBuilder, add_vectors,  # noqa: E402
                                                auto_nlist, make_index, train_index)
from pemt_pipeline.sampling.blockwise import CHUNK, ExactBuilder, make_plan  # noqa: E402 (after the sys.path line)
from pemt_pipeline.sampling.tablefile import TableSink  # noqa: E402 (after the sys.path line)

D, CLIPS, CLASSES = 512, 10, 700
PROBE_BLOCKS = 4


def synthetic(n: int, folder: Path, seed: int = 0):
    """Clustered embeddings [n, D] as a read-only memmap, video index [n]: class centre + video
    offset + clip noise (scales 2, 1, 0.3 per coordinate)."""
    path = folder / f"emb_{n}.npy"
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, D)).astype(np.float32) * 2.0
    label = rng.integers(0, CLASSES, math.ceil(n / CLIPS))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, D))
    step = 5000 * CLIPS  # whole videos per chunk
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        chunk_rng = np.random.default_rng([seed, lo])
        videos = np.arange(lo // CLIPS, math.ceil(hi / CLIPS))
        vc = centres[label[videos]] + chunk_rng.normal(size=(len(videos), D)).astype(np.float32)
        clips = np.repeat(vc, CLIPS, axis=0)[:hi - lo]
        out[lo:hi] = clips + 0.3 * chunk_rng.normal(size=clips.shape).astype(np.float32)
    out.flush()
    del out


def table_pairs(tab) -> set:
    return set(zip(tab["anchor"].tolist(), tab["candidate"].tolist()))


def recall(approx, exact) -> float:
    """Share of exact (anchor, candidate) pairs found, over the anchors exact covered."""
    approx = approx[approx["anchor"].isin(exact["anchor"].unique())]
    want = table_pairs(exact)
    return len(table_pairs(approx) & want) / max(1, len(want))


def load(path: str):
    emb = np.load(path, mmap_mode="r")
    return emb, np.arange(len(emb)) // CLIPS


def child_setup(path: str, threads: int, cfg: dict | None = None, **overrides):
    """(child process) Thread count set, embeddings memory-mapped: (emb, video ids, NegativeConfig)."""
    set_threads(threads)
    emb, vid = load(path)
    return emb, vid, (NegativeConfig(**{**cfg, **overrides}) if cfg is not None else None)


def set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)
        import faiss
        faiss.omp_set_num_threads(threads)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exact_case(path: str, cfg: dict, budget_s: float, floor: bool, threads: int, out: str,
               probe_anchors: int):
    """(child process) Full exact build, or whole blocks extrapolated when over budget (at least
    probe_anchors anchors, at least one block)."""
    emb, vid, cfg = child_setup(path, threads, cfg)
    n = len(vid)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        builder = ExactBuilder(emb, vid, cfg)
        sync(builder.device)
        setup = time.perf_counter() - t0
        plan = make_plan(n, emb.shape[1], n, cfg, builder.device)
        probe = n * n * 8e-9 > budget_s  # ~8 ns a pair on one core
        blocks = max(1, math.ceil(probe_anchors / plan.block))
        anchors = np.arange(min(n, blocks * plan.block)) if probe else np.arange(n)
        t1 = time.perf_counter()
        tab = builder.run(anchors, progress=False)
        sync(builder.device)
        run_s = time.perf_counter() - t1
    tab.to_parquet(out)
    row = {"anchors_measured": len(anchors), "extrapolated": bool(probe),
           "seconds": setup + run_s * n / len(anchors), "setup_s": setup,
           "peak_mb": mem.mb, "output_mb": len(anchors) * cfg.k * 24 / 2**20,
           "block": plan.block, "blocks_measured": math.ceil(len(anchors) / plan.block),
           "seconds_per_block": run_s / math.ceil(len(anchors) / plan.block),
           "fallback_anchors": builder.stats["fallback_anchors"], "device": str(builder.device),
           "gpu_peak_mb": mem.gpu_mb}
    if floor:
        row["floor_seconds"] = floor_time(builder, anchors, plan.block) * n / len(anchors)
        row["ratio_to_floor"] = run_s * n / len(anchors) / row["floor_seconds"]
        row["floor_gflops"] = 2.0 * n * n * emb.shape[1] / row["floor_seconds"] / 1e9
    return row


def floor_time(builder: ExactBuilder, anchors: np.ndarray, block: int) -> float:
    """The bare products exact mode streams: same anchor blocks, same candidate chunks."""
    pos_all = builder.layout.positions(anchors)
    t = time.perf_counter()
    for lo in range(0, len(pos_all), block):
        pos = pos_all[lo:lo + block]
        A = builder.rows.take(pos)
        for _ in builder._chunks(A, pos, CHUNK):
            pass
    sync(builder.device)
    return time.perf_counter() - t


def approx_case(path: str, cfg: dict, threads: int, out: str):
    """(child process) Approximate build of every anchor."""
    emb, vid, cfg = child_setup(path, threads, cfg)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        builder = ApproximateBuilder(emb, vid, cfg)
        index_s = time.perf_counter() - t0
        tab = builder.run(np.arange(len(vid)), progress=False)
        seconds = time.perf_counter() - t0
    tab.to_parquet(out)
    return {"seconds": seconds, "index_s": index_s, "peak_mb": mem.mb,
            "output_mb": len(vid) * cfg.k * 24 / 2**20}


class FillProbe(ApproximateBuilder):
    """ApproximateBuilder (trim=range, similar) whose near index is trained on `train_points`
    vectors and holds only the rows added so far (`fill`): a timing probe of the parts."""

    def __init__(self, embeddings, vid, cfg: NegativeConfig, train_points: int):
        self.train_points, self.times = train_points, {}
        t = time.perf_counter()
        super().__init__(embeddings, vid, cfg)
        self.times["setup_s"] = time.perf_counter() - t - sum(self.times.values())

    def _indexes(self) -> dict:
        t = time.perf_counter()
        self.extreme = self._extreme_set()
        self.times["extreme_s"] = time.perf_counter() - t
        index = make_index(self.faiss, self.n, self.d, False, self.cfg)
        t = time.perf_counter()
        train_index(index, self.x, self.cfg, self.rng, size=self.train_points)
        self.times["train_s"] = time.perf_counter() - t
        return {"near": index}


def search_probe(builder: FillProbe, anchors: np.ndarray) -> dict:
    """The approximate build of `anchors` against the current index: seconds and IVF distances
    computed per anchor, the search level it ended at."""
    stats = builder.faiss.cvar.indexIVF_stats
    builder.level = 0
    builder.table(anchors[:256], progress=False)  # warm-up (untimed)
    builder.level = 0
    stats.reset()
    t = time.perf_counter()
    builder.table(anchors, progress=False)
    return {"s_per_anchor": (time.perf_counter() - t) / len(anchors),
            "ndis_per_anchor": stats.ndis / len(anchors), "level": builder.level}


def distance_cost(builder: FillProbe, index, anchors: np.ndarray) -> tuple[float, float]:
    """Seconds per IVF distance: the same queries with n_probe and 32x more lists visited (the
    coarse quantiser's cost is the same), timed as index.search, slope over the distances; and
    the distances per query of the first-level search (n_probe lists)."""
    faiss, stats = builder.faiss, builder.faiss.cvar.indexIVF_stats
    q = np.ascontiguousarray(builder.x[anchors[:1024]])
    out = []
    for probe in (builder.cfg.n_probe, min(index.nlist, 32 * builder.cfg.n_probe)):
        params = faiss.SearchParametersIVF(nprobe=int(probe))
        index.search(q[:64], builder.k_search(), params=params)  # warm-up
        stats.reset()
        t = time.perf_counter()
        index.search(q, builder.k_search(), params=params)
        out.append((time.perf_counter() - t, stats.ndis))
    (t0, n0), (t1, n1) = out
    return (t1 - t0) / max(1, n1 - n0), n0 / len(q)


def approx_probe_case(path: str, cfg: dict, threads: int, train_points: int, probe_anchors: int):
    """(child process) Approximate mode (trim=range) by parts, extrapolated to all N (see the
    module docstring), for IVF-Flat and ivf_fp16 on one trained coarse quantiser."""
    emb, vid, cfg = child_setup(path, threads, cfg, index="ivf")
    n, d = emb.shape
    nlist = auto_nlist(n, cfg, False)
    configured = min(n, max(cfg.train_size, 16 * nlist))
    train_points = train_points or configured
    fill = min(1.0, max(0.025, 20 * nlist / n))  # at least ~20 vectors a list
    with PeakMemory() as mem:
        builder = FillProbe(emb, vid, cfg, train_points)
        ivf = builder.indexes["near"]
        times = dict(builder.times)
        train_full = times["train_s"] * configured / min(n, train_points)
        fp16 = builder.faiss.IndexIVFScalarQuantizer(ivf.quantizer, d, nlist,
                                                     builder.faiss.ScalarQuantizer.QT_fp16,
                                                     builder.faiss.METRIC_L2)
        fp16.train(np.ascontiguousarray(emb[:4096]))  # the quantiser is trained: fp16 needs nothing
        fp16.nprobe = ivf.nprobe
        anchors = np.arange(min(n, probe_anchors))
        out = {"nlist": nlist, "train_points": min(n, train_points), "train_points_configured": configured,
               **times, "train_s_extrapolated": train_full, "fill": fill}
        for name, index in (("ivf", ivf), ("ivf_fp16", fp16)):
            builder.indexes["near"] = index
            upto = int(round(fill * n))
            rss = rss_anon_mb()
            t = time.perf_counter()
            add_vectors(index, builder.x, 0, upto)
            add_s = time.perf_counter() - t
            grown = (rss_anon_mb() - rss) * 2**20
            probe = search_probe(builder, anchors)
            per_dist, first = distance_cost(builder, index, anchors)
            probe["ndis_first_level_per_anchor"] = first
            # a full index: every list 1/fill longer, so 1/fill times the distances per query
            per_full = probe["s_per_anchor"] + per_dist * probe["ndis_per_anchor"] * (1.0 / fill - 1.0)
            add_full = add_s * n / upto
            total = times["setup_s"] + times["extreme_s"] + train_full + add_full + per_full * n
            out[name] = {**probe, "s_per_distance": per_dist, "search_s_per_anchor_full": per_full,
                         "search_s": per_full * n, "add_s_measured": add_s, "add_s": add_full,
                         "index_bytes_per_vector_measured": grown / upto,
                         "index_gb_full": grown / upto * n / 2**30,
                         "index_gb_arithmetic": (n * (index.code_size + 8) + nlist * d * 4) / 2**30,
                         "seconds": total}
            index.reset()  # free its lists before the next one
    out["peak_mb"] = mem.mb
    out["probe_anchors"] = len(anchors)
    return out


def approx_quantile_probe(path: str, cfg: dict, threads: int, probe_anchors: int, out: str):
    """(child process) Approximate quantile mode (sample-based, no index) on probe_anchors anchors,
    extrapolated to all N."""
    emb, vid, cfg = child_setup(path, threads, cfg)
    n = len(vid)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        builder = ApproximateBuilder(emb, vid, cfg)
        setup = time.perf_counter() - t0
        anchors = np.arange(min(n, probe_anchors))
        t1 = time.perf_counter()
        tab = builder.run(anchors, progress=False)
        run_s = time.perf_counter() - t1
    tab.to_parquet(out)
    return {"seconds": setup + run_s * n / len(anchors), "setup_s": setup, "anchors_measured": len(anchors),
            "extrapolated": True, "peak_mb": mem.mb}


def table_io_case(rows: int, k: int, partition_rows: int, folder: str):
    """(child process) A table of `rows` rows (k per anchor, synthetic ids): built in part files,
    written, read back, indexed by NegativeSampler; seconds and peak memory of each."""
    n = rows // k
    vid = np.arange(n) // CLIPS
    rng = np.random.default_rng(0)
    out = {"rows": n * k, "anchors": n, "partition_rows": partition_rows}
    with PeakMemory() as mem:
        t = time.perf_counter()
        sink = TableSink(partition_rows, k, scratch_dir=folder)
        step = 8192  # anchors a block, as a builder hands them over
        for lo in range(0, n, step):
            a = np.repeat(np.arange(lo, min(n, lo + step)), k)
            c = (a + CLIPS + rng.integers(0, n - 2 * CLIPS, len(a))) % n  # another video
            p = np.tile(np.linspace(2.0, 1.0, k, dtype=np.float32) / np.float32(1.5 * k), len(a) // k)
            sink.add(a, c, p, np.ones(len(a), np.float32))
        table = sink.result()
        out["build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        table.write(Path(folder) / "negatives.parquet")
        out["write_s"] = time.perf_counter() - t
        out["parts"] = len(table.parts) if table.partitioned else 1
    out["build_write_peak_mb"] = mem.mb
    del table, sink
    with PeakMemory() as mem:
        t = time.perf_counter()
        frame = read_table(Path(folder) / "negatives.parquet", ("anchor", "candidate", "probability"))
        out["read_s"] = time.perf_counter() - t
    out["read_peak_mb"], out["table_mb"] = mem.mb, frame.memory_usage(index=False).sum() / 2**20
    with PeakMemory() as mem:
        t = time.perf_counter()
        sampler = NegativeSampler(frame, vid, seed=0)
        out["sampler_s"] = time.perf_counter() - t
        t = time.perf_counter()
        sampler.draw(rng.integers(0, n, 4096), 16)
        out["draw_4096x16_s"] = time.perf_counter() - t
    out["sampler_peak_mb"] = mem.mb  # above the table it indexes
    out["sampler_kept_mb"] = sampler._cum.nbytes / 2**20 + sum(
        x.nbytes for x in (sampler._segment, sampler._start, sampler._count)) / 2**20
    shutil.rmtree(Path(folder) / "negatives.parquet")
    return out


def naive_case(path: str, cfg: dict, threads: int, ram_gb: float):
    """(child process) Full distance matrix + sorted rows, while it fits."""
    emb, vid, _ = child_setup(path, threads)
    n = len(vid)
    need_gb = n * n * 4 * 3 / 2**30  # distances, sorted values, sorted indices
    if need_gb > ram_gb:
        return {"skipped": f"needs ~{need_gb:.0f} GB for the N x N matrices"}
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        reference_table(np.asarray(emb), vid, NegativeConfig(**cfg), use_mm=True)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mb": mem.mb}


def in_child(fn, *args):
    """Run one case in a fresh process: a clean baseline for peak memory."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def bench_size(n: int, folder: Path, args) -> dict:
    t0 = time.perf_counter()
    synthetic(n, folder)
    path = str(folder / f"emb_{n}.npy")
    out, tables = {"n": n, "synthetic_s": time.perf_counter() - t0,
                   "embeddings_gb": n * D * 4 / 2**30, "load_average_before": os.getloadavg()}, {}
    print(f"  synthetic       {out['synthetic_s']:.0f} s, {out['embeddings_gb']:.1f} GB memmap", flush=True)
    base = {"k": args.k, "device": args.device, "max_block_mb": args.max_block_mb,
            "device_cache_mb": args.device_cache_mb}
    probe = args.probe_blocks * make_plan(n, D, n, NegativeConfig(**base), torch.device("cpu")).block
    for trim, floor in (("quantile", True), ("range", False)):
        tables[trim] = str(folder / f"exact_{trim}.parquet")
        out[f"exact_{trim}"] = in_child(exact_case, path, {**base, "trim": trim},
                                        args.exact_budget_s, floor, args.threads, tables[trim], probe)
        print(f"  exact/{trim:<8} {fmt(out[f'exact_{trim}'])}", flush=True)
    approx = {**base, "mode": "approximate", "n_probe": args.n_probe, "device": "cpu"}
    if n > args.approx_probe_above or args.approx_probe_also:
        row = in_child(approx_probe_case, path, {**approx, "trim": "range"}, args.threads,
                       args.approx_train_points, args.approx_probe_anchors)
        for name in ("ivf", "ivf_fp16"):
            row[name]["speedup"] = out["exact_range"]["seconds"] / row[name]["seconds"]
        out["approx_range_probe"] = row
        print(f"  approx/range probe {fmt({k: v for k, v in row.items() if not isinstance(v, dict)})}")
        for name in ("ivf", "ivf_fp16"):
            print(f"    {name:<8} {fmt(row[name])}", flush=True)
    if n > args.approx_probe_above:
        table = str(folder / "approx_quantile.parquet")
        row = in_child(approx_quantile_probe, path, {**approx, "trim": "quantile"}, args.threads,
                       args.approx_probe_anchors, table)
        row["recall"] = recall(pd.read_parquet(table), pd.read_parquet(tables["quantile"]))
        row["speedup"] = out["exact_quantile"]["seconds"] / row["seconds"]
        out["approx_quantile"] = row
        print(f"  approx/quantile {fmt(row)}", flush=True)
    else:
        for trim in ("range", "quantile"):
            table = str(folder / f"approx_{trim}.parquet")
            row = in_child(approx_case, path, {**approx, "trim": trim}, args.threads, table)
            row["recall"] = recall(pd.read_parquet(table), pd.read_parquet(tables[trim]))
            row["speedup"] = out[f"exact_{trim}"]["seconds"] / row["seconds"]
            out[f"approx_{trim}"] = row
            print(f"  approx/{trim:<7} {fmt(row)}", flush=True)
    out["naive"] = in_child(naive_case, path, base, args.threads, args.naive_ram_gb)
    print(f"  naive           {fmt(out['naive'])}", flush=True)
    for f in folder.iterdir():
        f.unlink()
    out["load_average_after"] = os.getloadavg()
    out["wall_s"] = time.perf_counter() - t0
    return out


def fmt(row: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items())


def exponent(xs, ys) -> float | None:
    """Least-squares slope of log y on log x."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y and y > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def approx_range(r: dict) -> dict:
    """The approx/range figures of a size: the full build, else the probe's IVF-Flat (marked)."""
    if "approx_range" in r:
        return r["approx_range"]
    return {**r["approx_range_probe"]["ivf"], "recall": float("nan"), "probed": True}


def summary(rows: list[dict]) -> dict:
    ns = [r["n"] for r in rows]
    def get(key, field):
        return [r[key].get(field) for r in rows]
    work = [r["exact_quantile"]["peak_mb"] - r["exact_quantile"]["output_mb"] for r in rows]
    return {"time_exponent_exact": exponent(ns, get("exact_quantile", "seconds")),
            "time_exponent_floor": exponent(ns, get("exact_quantile", "floor_seconds")),
            "time_exponent_approx_range": exponent(ns, [approx_range(r)["seconds"] for r in rows]),
            "working_mb_exact": work, "working_mb_exponent_exact": exponent(ns, work)}


def print_table(rows: list[dict], summ: dict) -> None:
    head = (f"{'N':>9} {'exact s':>10} {'floor s':>10} {'ratio':>6} {'peak MB':>8} {'out MB':>7} "
            f"{'range s':>10} {'approx s':>9} {'speedup':>8} {'recall':>7} "
            f"{'aq s':>8} {'aq rec':>7} {'naive s':>8}")
    print(head)
    for r in rows:
        q, e, a, aq, nv = (r["exact_quantile"], r["exact_range"], approx_range(r),
                           r["approx_quantile"], r["naive"])
        star = "*" if q["extrapolated"] else " "
        print(f"{r['n']:>9} {q['seconds']:>9.4g}{star} {q['floor_seconds']:>10.4g} "
              f"{q['ratio_to_floor']:>6.2f} {q['peak_mb']:>8.0f} {q['output_mb']:>7.0f} "
              f"{e['seconds']:>9.4g}{'*' if e['extrapolated'] else ' '} {a['seconds']:>8.4g}"
              f"{'+' if a.get('probed') else ' '} {a['speedup']:>8.1f} {a['recall']:>7.3f} "
              f"{aq['seconds']:>7.4g}{'*' if aq.get('extrapolated') else ' '} {aq['recall']:>7.3f} "
              f"{nv.get('seconds', float('nan')):>8.1f}")
        if "approx_range_probe" in r:
            p = r["approx_range_probe"]
            for name in ("ivf", "ivf_fp16"):
                x = p[name]
                print(f"{'':>9} probe {name:<8} total {x['seconds']:.4g} s = setup {p['setup_s']:.0f} + extreme "
                      f"{p['extreme_s']:.0f} + train {p['train_s_extrapolated']:.0f} + add {x['add_s']:.0f} + "
                      f"search {x['search_s']:.0f}; index {x['index_gb_full']:.1f} GB "
                      f"({x['index_gb_arithmetic']:.1f} by arithmetic)")
    print("* extrapolated from whole anchor blocks (all N candidates each) / a probe of anchors")
    print("+ approximate mode by parts (approx_range_probe), extrapolated; recall not measured")
    print("growth exponents: " + ", ".join(f"{k}={v:.2f}" for k, v in summ.items()
                                             if isinstance(v, float)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--quick", action="store_true", help="sizes 2000,10000 (a smoke run)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_negatives.json"))
    p.add_argument("--threads", type=int, default=1,
                   help="torch/faiss threads per case (0 = library default); 1 gives stable "
                        "figures on a shared machine")
    p.add_argument("--exact-budget-s", type=float, default=900.0,
                   help="longest full exact run; longer ones are probed and extrapolated")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--n-probe", type=int, default=16)
    p.add_argument("--max-block-mb", type=float, default=256.0)
    p.add_argument("--naive-ram-gb", type=float, default=8.0)
    p.add_argument("--tmp", default=None, help="folder for the memory-mapped embeddings")
    p.add_argument("--probe-blocks", type=int, default=PROBE_BLOCKS,
                   help="whole anchor blocks an extrapolated exact/quantile run measures")
    p.add_argument("--device", default="cpu", help="exact mode's device (cpu | cuda)")
    p.add_argument("--device-cache-mb", type=float, default=2048.0,
                   help="exact mode on CUDA: candidates kept on the GPU when they fit")
    p.add_argument("--approx-probe-above", type=int, default=2_000_000,
                   help="sizes above this measure approximate mode by parts (see above)")
    p.add_argument("--approx-probe-also", action="store_true",
                   help="also run the by-parts probe at smaller sizes (checks its extrapolation)")
    p.add_argument("--approx-train-points", type=int, default=0,
                   help="k-means points of the probe (0 = the configured max(train_size, 16*nlist))")
    p.add_argument("--approx-probe-anchors", type=int, default=4096)
    p.add_argument("--table-rows", type=int, default=0,
                   help="also measure the table's build/write/read/sampler at this many rows")
    p.add_argument("--partition-rows", type=int, default=16_000_000)
    args = p.parse_args(argv)
    sizes = [2000, 10000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    t0 = time.perf_counter()
    rows, table_io = [], None
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        free_gb = shutil.disk_usage(tmp).free / 2**30
        need_gb = max(sizes, default=0) * D * 4 / 2**30
        print(f"disk: {free_gb:.0f} GB free in {tmp}, the largest memmap needs {need_gb:.1f} GB; "
              f"load average {os.getloadavg()}", flush=True)
        if need_gb > free_gb - 5:
            raise SystemExit(f"not enough disk for {need_gb:.1f} GB of embeddings (+5 GB spare) in {tmp}")
        if args.table_rows:
            table_io = in_child(table_io_case, args.table_rows, 32, args.partition_rows, tmp)
            print(f"table at {args.table_rows} rows: {fmt(table_io)}", flush=True)
        for n in sizes:
            print(f"N = {n}", flush=True)
            rows.append(bench_size(n, Path(tmp), args))
    summ = summary(rows) if rows else {}
    if rows:
        print_table(rows, summ)
    result = {"config": {**vars(args), "d": D, "clips_per_video": CLIPS, "classes": CLASSES},
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "cpus": multiprocessing.cpu_count(),
                          "ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30},
              "rows": rows, "table_io": table_io, "summary": summ,
              "wall_seconds": time.perf_counter() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(Path(args.out), json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()

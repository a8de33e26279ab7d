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
row says so. Peak memory: the process's anonymous RSS (not the memory-mapped embeddings),
sampled every 5 ms, minus its value before the build, each case in a fresh process; output_mb
is the table's own size (anchors x K x 24 bytes), so peak - output is the working set. Threads:
--threads per case (default 1: on a shared 2-core machine two OpenMP threads stall on each
other's barriers whenever another job runs; exact mode and its floor always share the setting).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
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

from pemt_pipeline.profiling import PeakMemory  # noqa: E402 (after the sys.path line)
from pemt_pipeline.sampling import NegativeConfig, reference_table  # noqa: E402 (after the sys.path line)
from pemt_pipeline.sampling.approximate import ApproximateBuilder  # noqa: E402 (after the sys.path line)
from pemt_pipeline.sampling.blockwise import CHUNK, ExactBuilder, make_plan  # noqa: E402 (after the sys.path line)

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


def set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)
        import faiss
        faiss.omp_set_num_threads(threads)


def exact_case(path: str, cfg: dict, budget_s: float, floor: bool, threads: int, out: str):
    """(child process) Full exact build, or whole blocks extrapolated when over budget."""
    set_threads(threads)
    emb, vid = load(path)
    cfg = NegativeConfig(**cfg)
    n = len(vid)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        builder = ExactBuilder(emb, vid, cfg)
        setup = time.perf_counter() - t0
        plan = make_plan(n, emb.shape[1], n, cfg, builder.device)
        probe = n * n * 8e-9 > budget_s  # ~8 ns a pair on one core
        anchors = np.arange(min(n, PROBE_BLOCKS * plan.block)) if probe else np.arange(n)
        t1 = time.perf_counter()
        tab = builder.run(anchors, progress=False)
        run_s = time.perf_counter() - t1
    tab.to_parquet(out)
    row = {"anchors_measured": len(anchors), "extrapolated": bool(probe),
           "seconds": setup + run_s * n / len(anchors), "setup_s": setup,
           "peak_mb": mem.mb, "output_mb": len(anchors) * cfg.k * 24 / 2**20,
           "block": plan.block, "fallback_anchors": builder.stats["fallback_anchors"]}
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
    return time.perf_counter() - t


def approx_case(path: str, cfg: dict, threads: int, out: str):
    """(child process) Approximate build of every anchor."""
    set_threads(threads)
    emb, vid = load(path)
    cfg = NegativeConfig(**cfg)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        builder = ApproximateBuilder(emb, vid, cfg)
        index_s = time.perf_counter() - t0
        tab = builder.run(np.arange(len(vid)), progress=False)
        seconds = time.perf_counter() - t0
    tab.to_parquet(out)
    return {"seconds": seconds, "index_s": index_s, "peak_mb": mem.mb,
            "output_mb": len(vid) * cfg.k * 24 / 2**20}


def naive_case(path: str, cfg: dict, threads: int, ram_gb: float):
    """(child process) Full distance matrix + sorted rows, while it fits."""
    set_threads(threads)
    emb, vid = load(path)
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
    synthetic(n, folder)
    path = str(folder / f"emb_{n}.npy")
    base = {"k": args.k, "device": "cpu", "max_block_mb": args.max_block_mb}
    out, tables = {"n": n}, {}
    for trim, floor in (("quantile", True), ("range", False)):
        tables[trim] = str(folder / f"exact_{trim}.parquet")
        out[f"exact_{trim}"] = in_child(exact_case, path, {**base, "trim": trim},
                                        args.exact_budget_s, floor, args.threads, tables[trim])
        print(f"  exact/{trim:<8} {fmt(out[f'exact_{trim}'])}", flush=True)
    for trim in ("range", "quantile"):
        cfg = {**base, "trim": trim, "mode": "approximate", "n_probe": args.n_probe}
        table = str(folder / f"approx_{trim}.parquet")
        row = in_child(approx_case, path, cfg, args.threads, table)
        row["recall"] = recall(pd.read_parquet(table), pd.read_parquet(tables[trim]))
        row["speedup"] = out[f"exact_{trim}"]["seconds"] / row["seconds"]
        out[f"approx_{trim}"] = row
        print(f"  approx/{trim:<7} {fmt(row)}", flush=True)
    out["naive"] = in_child(naive_case, path, base, args.threads, args.naive_ram_gb)
    print(f"  naive           {fmt(out['naive'])}", flush=True)
    for f in folder.iterdir():
        f.unlink()
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


def summary(rows: list[dict]) -> dict:
    ns = [r["n"] for r in rows]
    def get(key, field):
        return [r[key].get(field) for r in rows]
    work = [r["exact_quantile"]["peak_mb"] - r["exact_quantile"]["output_mb"] for r in rows]
    return {"time_exponent_exact": exponent(ns, get("exact_quantile", "seconds")),
            "time_exponent_floor": exponent(ns, get("exact_quantile", "floor_seconds")),
            "time_exponent_approx_range": exponent(ns, get("approx_range", "seconds")),
            "working_mb_exact": work, "working_mb_exponent_exact": exponent(ns, work)}


def print_table(rows: list[dict], summ: dict) -> None:
    head = (f"{'N':>9} {'exact s':>9} {'floor s':>9} {'ratio':>6} {'peak MB':>8} {'out MB':>7} "
            f"{'range s':>9} {'approx s':>9} {'speedup':>8} {'recall':>7} "
            f"{'aq s':>7} {'aq rec':>7} {'naive s':>8}")
    print(head)
    for r in rows:
        q, e, a, aq, nv = (r["exact_quantile"], r["exact_range"], r["approx_range"],
                           r["approx_quantile"], r["naive"])
        star = "*" if q["extrapolated"] else " "
        print(f"{r['n']:>9} {q['seconds']:>8.1f}{star} {q['floor_seconds']:>9.1f} "
              f"{q['ratio_to_floor']:>6.2f} {q['peak_mb']:>8.0f} {q['output_mb']:>7.0f} "
              f"{e['seconds']:>8.1f}{'*' if e['extrapolated'] else ' '} {a['seconds']:>9.1f} "
              f"{a['speedup']:>8.1f} {a['recall']:>7.3f} {aq['seconds']:>7.1f} "
              f"{aq['recall']:>7.3f} {nv.get('seconds', float('nan')):>8.1f}")
    print("* extrapolated from whole anchor blocks (all N candidates each)")
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
    args = p.parse_args(argv)
    sizes = [2000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n in sizes:
            print(f"N = {n}", flush=True)
            rows.append(bench_size(n, Path(tmp), args))
    summ = summary(rows)
    print_table(rows, summ)
    result = {"config": {**vars(args), "d": D, "clips_per_video": CLIPS, "classes": CLASSES},
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "cpus": multiprocessing.cpu_count()},
              "rows": rows, "summary": summ, "wall_seconds": time.perf_counter() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()

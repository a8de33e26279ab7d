"""Benchmark the sharing variants: parameters, one training step's time and memory.

    PYTHONPATH=src python benchmarks/bench_model.py [--quick] [--out PATH] [--device auto]

Sections (mid fusion; variants unshared / cross-layer / low-rank side by side):
  small_with_cnns     conf/base's small model with its CNNs, 2 videos x 8 clips (base clip sizes)
  paper_transformers  the paper's Transformers (hidden 768, FFN 3072, 6 layers, rank 128) on given
                      CNN embeddings (the CNNs are not run), 8 videos x 10 clips
  orthogonal_maps     the low-rank paper Transformers with each orthogonal parametrisation
  paper_full_bf16     (CUDA only) the whole paper model in bf16 autocast, eager and torch.compile,
                      with model FLOPs utilisation

Time is forward + backward (median over steps, after warm-up); the AdamW step is timed apart.
Memory: on CUDA the peak allocated during forward + backward (parameters, gradients and optimiser
state included); on CPU, where no allocator statistics exist, parameters + gradients + AdamW state
(exact) plus the bytes of tensors autograd saves for backward (the activations).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pemt_pipeline.models import ModelConfig, PEMTModel  # noqa: E402
from pemt_pipeline.project_config import project_model_config  # noqa: E402
from pemt_pipeline.models.param_table import format_table  # noqa: E402

VARIANTS = {"unshared": (False, "none"), "cross_layer": (True, "none"),
            "lowrank": (True, "lowrank")}
BASE_CLIPS = dict(frames=8, crop=56, n_mels=40, mel_frames=48)  # conf/base ingestion sizes
PAPER_CLIPS = dict(frames=32, crop=112, n_mels=80, mel_frames=128)


def variant(cfg: ModelConfig, name: str, **changes) -> ModelConfig:
    share_layers, share_transformers = VARIANTS[name]
    return dataclasses.replace(cfg, fusion="mid", share_layers=share_layers,
                               share_transformers=share_transformers, **changes)


def stream_loss(streams) -> torch.Tensor:
    """A stand-in for MEP/CPP touching every stream output."""
    return sum(s.clips.float().square().mean() + s.summary.float().square().mean()
               for s in streams if s is not None)


def video_batch(videos: int, clips: int, frames: int, crop: int, n_mels: int, mel_frames: int,
                device: torch.device):
    g = torch.Generator().manual_seed(0)
    video = torch.randn(videos, clips, 3, frames, crop, crop, generator=g)
    audio = torch.randn(videos, clips, n_mels, mel_frames, generator=g)
    return video.to(device), audio.to(device)


def full_model_loss(video, audio):
    def loss(model):
        out = model(video, audio)
        return stream_loss([out.visual, out.audio, out.multimodal_visual, out.multimodal_audio])
    return loss


def transformer_loss(cfg: ModelConfig, videos: int, clips: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(videos, clips, cfg.visual.out_dim, generator=g).to(device)
    a = torch.randn(videos, clips, cfg.audio.out_dim, generator=g).to(device)
    return lambda model: stream_loss(model.contextualize(v, a).values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def saved_activation_bytes(fn, exclude: set[int]) -> tuple[torch.Tensor, int]:
    """Run fn; bytes of the distinct storages autograd saves for backward (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def bench(model: torch.nn.Module, loss_fn, device: torch.device, steps: int, warmup: int,
          bf16: bool = False, compile_model: bool = False,
          peak_tflops: float | None = None) -> dict:
    """Time forward+backward and the optimiser step; measure memory and FLOPs of one step (FLOPs
    counted on the eager model; MFU against `peak_tflops` where given)."""
    model.to(device).train()
    run = torch.compile(model) if compile_model else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def forward(module=run):
        with autocast:
            return loss_fn(module)

    params = list(model.parameters())
    # warm-up; find the trained parameters (those a step gives gradients to)
    for _ in range(max(warmup, 1)):
        forward().backward()
    trained = [p for p in params if p.grad is not None]
    opt = torch.optim.AdamW(trained, lr=1e-4, fused=device.type == "cuda")
    opt.step()
    opt.zero_grad(set_to_none=True)

    fwd_bwd, optim = [], []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        forward().backward()
        _sync(device)
        t1 = time.perf_counter()
        opt.step()
        _sync(device)
        optim.append(time.perf_counter() - t1)
        fwd_bwd.append(t1 - t0)
        opt.zero_grad(set_to_none=True)

    n_trained = sum(p.numel() for p in trained)
    static = sum(p.numel() * p.element_size() for p in params) + sum(
        p.numel() * p.element_size() * 3 for p in trained)  # + gradient + 2 AdamW moments
    row = {"trained_params": n_trained, "fwd_bwd_ms": 1e3 * statistics.median(fwd_bwd),
           "optim_ms": 1e3 * statistics.median(optim), "param_grad_adam_mb": static / 2**20}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        forward().backward()
        _sync(device)
        row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        opt.zero_grad(set_to_none=True)
    else:
        exclude = {p.untyped_storage().data_ptr() for p in params}
        loss, saved = saved_activation_bytes(forward, exclude)
        loss.backward()
        opt.zero_grad(set_to_none=True)
        row["activations_mb"] = saved / 2**20
        row["peak_mb"] = (static + saved) / 2**20
    with FlopCounterMode(display=False) as counter:
        forward(model).backward()
    opt.zero_grad(set_to_none=True)
    row["gflops_per_step"] = counter.get_total_flops() / 1e9
    row["achieved_tflops"] = row["gflops_per_step"] / row["fwd_bwd_ms"]
    if peak_tflops:
        row["mfu"] = row["achieved_tflops"] / peak_tflops
    return row


def run_section(title: str, builds: dict, device, steps, warmup, without_cnns: bool = False,
                **kw) -> list[dict]:
    """builds: name -> (config, loss_fn). Adds ratios against the first entry."""
    rows = []
    for name, (cfg, loss_fn) in builds.items():
        torch.manual_seed(0)
        model = PEMTModel(cfg)
        counts = model.parameter_counts()
        if without_cnns:  # not run by the loss: keep them out of memory and parameter figures
            model.visual_cnn = model.audio_cnn = None
        row = {"variant": name, "transformer_params": counts["transformers"],
               **bench(model, loss_fn, device, steps, warmup, **kw)}
        rows.append(row)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = rows[0]
    for row in rows:
        for key in ("trained_params", "fwd_bwd_ms", "peak_mb", "param_grad_adam_mb"):
            row[f"{key}_ratio"] = row[key] / ref[key]
    print_section(title, rows)
    return rows


def print_section(title: str, rows: list[dict]) -> None:
    columns = [("variant", "variant"), ("transformer_params", "transformer params"),
               ("trained_params", "trained params"), ("fwd_bwd_ms", "fwd+bwd ms"),
               ("optim_ms", "AdamW ms"), ("gflops_per_step", "GFLOP/step"),
               ("param_grad_adam_mb", "params+grads+adam MB"), ("peak_mb", "peak MB"),
               ("trained_params_ratio", "params x"), ("fwd_bwd_ms_ratio", "time x"),
               ("peak_mb_ratio", "peak mem x")]
    if any("mfu" in r for r in rows):
        columns.append(("mfu", "MFU"))

    def fmt(v):
        if isinstance(v, int):
            return f"{v:,}"
        return f"{v:.3f}" if isinstance(v, float) and v < 10 else (
            f"{v:.1f}" if isinstance(v, float) else str(v))

    shown = [{k: fmt(r[k]) if k in r else "-" for k, _ in columns} for r in rows]
    print(f"\n== {title}")
    print(format_table(shown, columns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller paper batch")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_model.json"))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--gpu-videos", type=int, default=4,
                        help="videos per batch in the full paper model section (CUDA); the "
                        "visual CNN saves ~0.66 GB of fp32 activations per clip (CPU measure)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (CUDA)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="accelerator bf16 dense peak for MFU (H100 SXM: 989)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.set_num_threads(args.threads)
    steps, warmup = (1, 1) if args.quick else (args.steps, 2)
    videos, clips = (2, 10) if args.quick else (8, 10)
    results = {"meta": {"torch": torch.__version__, "device": str(device),
                        "device_name": torch.cuda.get_device_name(device)
                        if device.type == "cuda" else platform.processor() or platform.machine(),
                        "threads": torch.get_num_threads(), "steps": steps, "quick": args.quick,
                        "paper_batch": [videos, clips]},
               "sections": {}}
    sec = results["sections"]

    small = project_model_config(ROOT / "conf", "base")
    video, audio = video_batch(2, small.max_clips, **BASE_CLIPS, device=device)
    sec["small_with_cnns"] = run_section(
        f"small config with CNNs (conf/base), 2 videos x {small.max_clips} clips",
        {n: (variant(small, n), full_model_loss(video, audio)) for n in VARIANTS},
        device, steps, warmup)

    paper = ModelConfig()
    loss = transformer_loss(paper, videos, clips, device)
    sec["paper_transformers"] = run_section(
        f"paper Transformers without CNNs, {videos} videos x {clips} clips",
        {n: (variant(paper, n), loss) for n in VARIANTS}, device, steps, warmup,
        without_cnns=True)

    sec["orthogonal_maps"] = run_section(
        f"low-rank paper Transformers by orthogonal map, {videos} videos x {clips} clips",
        {m: (variant(paper, "lowrank", orthogonal_map=m), loss)
         for m in ("matrix_exp", "cayley", "householder")}, device, steps, warmup,
        without_cnns=True)

    if device.type == "cuda":
        video, audio = video_batch(args.gpu_videos, paper.max_clips, **PAPER_CLIPS, device=device)
        for compiled in (False, True) if not args.no_compile else (False,):
            key = "paper_full_bf16" + ("_compiled" if compiled else "")
            sec[key] = run_section(
                f"paper model, bf16 autocast{', torch.compile' if compiled else ''}, "
                f"{args.gpu_videos} videos x {paper.max_clips} clips",
                {n: (variant(paper, n), full_model_loss(video, audio)) for n in VARIANTS},
                device, steps, warmup + compiled, bf16=True, compile_model=compiled,
                peak_tflops=args.peak_tflops)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

"""Benchmark the sharing variants: parameters, one training step's time and memory, against a baseline
revision of the model code and against the bare matrix products the step issues.

    PYTHONPATH=src python benchmarks/bench_model.py [--quick] [--baseline REV] [--targets]
        [--threads 1,2] [--sections paper_transformers,...] [--steps 7] [--out PATH] [--device auto]

Sections (mid fusion; variants unshared / cross-layer / low-rank side by side), each CPU section once per
`--threads` count (key `<section>_threads<n>`):
  small_with_cnns     conf/base's small model with its CNNs, 2 videos x 8 clips (base clip sizes)
  paper_transformers  the paper's Transformers (hidden 768, FFN 3072, 6 layers, rank 128) on given
                      CNN embeddings (the CNNs are not run), 8 videos x 10 clips
  orthogonal_maps     the low-rank paper Transformers with each orthogonal parametrisation
  matrix_exp_gradient expm forward + backward of one 128 x 128 Sigma generator: torch's backward and
                      the model's (models/orthogonal.expm_frechet), by the size of the generator
  dropout             nn.Dropout against the model's Dropout (models/dropout.py), forward + backward
  paper_full_bf16     (CUDA only) the whole paper model in bf16 autocast, eager and torch.compile,
                      with model FLOPs utilisation

Baseline (`--baseline REV`, e.g. e6888a4): REV's `pemt_pipeline` is imported from a temporary git worktree
into this process under its own module objects; each variant is built by both revisions with the same
weights (one state dict loaded into both; its keys must match) and the two are timed interleaved, step
by step on the same inputs, so machine noise hits both alike. Their losses (and gradients) on the same
batch, dropout off, must agree within float rounding: a mismatch is reported and makes the run exit 1.

Floor: the matrix products (mm, addmm, bmm, baddbmm, ... and convolutions) that one forward + backward of
the current model issues are recorded at the dispatcher (op, shapes, strides, dtype) and replayed on
preallocated random tensors, interleaved with the models' steps. A fused attention kernel counts as its
matrix products (forward Q K^T and P V; backward dV, dP, dQ, dK: no recomputation). Nothing else of the
step (normalisations, softmax, elementwise ops, the optimiser) is in the floor.

Time is forward + backward (median over steps, after warm-up); the AdamW step is timed apart.
Memory (exact, per model): parameters, gradients, AdamW state, and the activations = bytes of the
distinct storages autograd saves for backward (parameters excluded); the CPU peak is their sum. On CUDA
also the peak allocated during forward + backward (above what was allocated before it, plus this model's
parameters and AdamW state).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import ModuleType

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pemt_pipeline.atomic import write_text  # noqa: E402
from pemt_pipeline.devices import resolve_device, torch_threads  # noqa: E402
from pemt_pipeline.models import ModelConfig, PEMTModel  # noqa: E402
from pemt_pipeline.models.dropout import Dropout  # noqa: E402
from pemt_pipeline.models.orthogonal import _MatrixExp  # noqa: E402
from pemt_pipeline.models.param_table import format_table  # noqa: E402
from pemt_pipeline.project_config import project_model_config  # noqa: E402

PACKAGE = "pemt_pipeline"
VARIANTS = {"unshared": (False, "none"), "cross_layer": (True, "none"),
            "lowrank": (True, "lowrank")}
BASE_CLIPS = dict(frames=8, crop=56, n_mels=40, mel_frames=48)  # conf/base ingestion sizes
PAPER_CLIPS = dict(frames=32, crop=112, n_mels=80, mel_frames=128)
CPU_SECTIONS = ("small_with_cnns", "paper_transformers", "orthogonal_maps", "matrix_exp_gradient", "dropout")
SECTIONS = (*CPU_SECTIONS, "paper_full_bf16")
LOSS_RTOL = {False: 1e-4, True: 2e-2}  # fp32 / bf16 autocast: baseline and current losses must agree
GRAD_RTOL = {False: 1e-2, True: 1e-1}  # largest gradient difference / largest gradient, per parameter
aten = torch.ops.aten
# the dispatcher's matrix products (`out=` and in-place overloads included) and convolutions
PRODUCT_OPS = {aten.mm, aten.addmm, aten.addmm_, aten._addmm_activation, aten.bmm, aten.baddbmm, aten.baddbmm_,
               aten.addbmm, aten.addbmm_, aten.mv, aten.addmv, aten.addmv_, aten.dot, aten.convolution,
               aten.convolution_backward}


def variant(cfg: ModelConfig, name: str, **changes) -> ModelConfig:
    share_layers, share_transformers = VARIANTS[name]
    return dataclasses.replace(cfg, fusion="mid", share_layers=share_layers,
                               share_transformers=share_transformers, **changes)


def _offset(like: torch.Tensor) -> torch.Tensor:
    """A fixed random vector [D] for outputs [..., D] (the same for every model and call)."""
    key = (like.shape[-1], like.device)
    if key not in _OFFSETS:
        _OFFSETS[key] = torch.randn(like.shape[-1], generator=torch.Generator().manual_seed(1)).to(like.device)
    return _OFFSETS[key]


_OFFSETS: dict[tuple, torch.Tensor] = {}


def stream_loss(streams) -> torch.Tensor:
    """A stand-in for MEP/CPP touching every stream output: mean squared distance to a fixed random
    vector (not the plain mean square, which a LayerNorm output keeps at ~1 whatever the weights)."""
    return sum((t.float() - _offset(t)).square().mean() for s in streams if s is not None for t in (s.clips, s.summary))


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


# ---------------------------------------------------------------- the baseline revision, in this process

def _package_modules() -> list[str]:
    return [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]


@contextmanager
def git_worktree(rev: str) -> Iterator[Path]:
    """A temporary detached git worktree of `rev` (removed on exit, also on error or Ctrl-C)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_model_baseline_"))
    tree = tmp / "tree"
    added = subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT,
                           capture_output=True, text=True)
    try:
        if added.returncode:
            raise SystemExit(f"--baseline {rev}: `git worktree add` failed: {added.stderr.strip()}")
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def import_revision(src: Path) -> dict[str, ModuleType]:
    """`pemt_pipeline.models` as found under `src`, imported under module objects of its own: this
    process's `pemt_pipeline*` modules are set aside meanwhile and put back after, and the
    revision's are returned (its functions keep their own module globals). Checks that its PEMTModel
    is another class, from a file under `src`."""
    current = {name: sys.modules.pop(name) for name in _package_modules()}
    sys.path.insert(0, str(src))
    importlib.invalidate_caches()
    try:
        importlib.import_module(f"{PACKAGE}.models")
    finally:
        sys.path.remove(str(src))
        revision = {name: sys.modules.pop(name) for name in _package_modules()}
        sys.modules.update(current)
    other = revision[f"{PACKAGE}.models"].PEMTModel
    file = Path(inspect.getsourcefile(other.__init__))  # not inspect.getfile(class): that asks sys.modules
    if other is PEMTModel or not file.resolve().is_relative_to(src.resolve()):
        raise RuntimeError(f"the baseline PEMTModel ({file}) is not a class of its own from {src}: the "
                           "revisions' modules got mixed")
    return revision


@dataclasses.dataclass
class Baseline:
    """Another revision's model classes, imported into this process (`import_revision`)."""

    rev: str
    modules: dict[str, ModuleType]

    def model(self, cfg: ModelConfig) -> torch.nn.Module:
        """The revision's PEMTModel of the same configuration (through its own ModelConfig)."""
        models = self.modules[f"{PACKAGE}.models"]
        try:
            other_cfg = models.ModelConfig.from_dict(cfg.to_dict())
        except (TypeError, ValueError) as e:
            raise SystemExit(f"--baseline {self.rev}: its ModelConfig does not take this configuration: {e}")
        return models.PEMTModel(other_cfg)


def load_same_weights(current: torch.nn.Module, baseline: torch.nn.Module, rev: str) -> None:
    """The current model's state dict loaded into the baseline; the two must have the same keys and shapes."""
    state, other = current.state_dict(), baseline.state_dict()
    if state.keys() != other.keys():
        missing, extra = sorted(other.keys() - state.keys()), sorted(state.keys() - other.keys())
        raise SystemExit(f"--baseline {rev}: the state dict keys differ from the current model's: only in the "
                         f"baseline {missing[:8]}{'...' if len(missing) > 8 else ''}, only in the current "
                         f"{extra[:8]}{'...' if len(extra) > 8 else ''}")
    shapes = [k for k in state if state[k].shape != other[k].shape]
    if shapes:
        raise SystemExit(f"--baseline {rev}: state dict shapes differ: "
                         + ", ".join(f"{k} {tuple(other[k].shape)} vs {tuple(state[k].shape)}" for k in shapes[:8]))
    baseline.load_state_dict(state)


# ---------------------------------------------------------------- the floor: the step's bare products

@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor argument of a recorded product: its layout (shape, strides, storage offset in elements)
    and the memory it was a view of (`storage`: the same storage, the same buffer in the replay, so the
    replay reads and writes the memory the step did, a weight and its transposed view alike)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: torch.dtype
    device: torch.device
    storage: tuple

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorSpec:
        return cls(tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device,
                   (t.untyped_storage().data_ptr(), t.dtype))

    @classmethod
    def dense(cls, shape: tuple[int, ...], like: torch.Tensor, key: tuple, transpose: bool = False) -> TensorSpec:
        """A contiguous [N, a, b] tensor; transpose: the [N, b, a] transposed view of one."""
        n, a, b = shape
        stride = (a * b, 1, a) if transpose else (a * b, b, 1)
        return cls((n, b, a) if transpose else shape, stride, 0, like.dtype, like.device, key)

    @property
    def extent(self) -> int:
        """Elements of storage the view reaches."""
        if 0 in self.shape:
            return self.offset
        return self.offset + sum((n - 1) * st for n, st in zip(self.shape, self.stride)) + 1


def _is_sdpa(func) -> bool:
    name = func.overloadpacket.__name__
    return name.startswith("_scaled_dot_product_") and "attention" in name and "math" not in name


def attention_products(func, args: tuple, index: int) -> list[tuple]:
    """A fused attention kernel's matrix products as bmm calls (q [.., L, E], k [.., S, E], v [.., S, Ev]):
    forward Q K^T, P V; backward (args: grad_out, q, k, v, ...) dV = P^T dO, dP = dO V^T, dQ = dS K,
    dK = dS^T Q."""
    backward = func.overloadpacket.__name__.endswith("_backward")
    q, k, v = args[1:4] if backward else args[0:3]
    n = math.prod(q.shape[:-2])
    L, E, S, Ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]

    def spec(shape, role, transpose=False):
        return TensorSpec.dense(shape, q, ("attention", index, role, transpose, q.dtype), transpose)

    if not backward:
        pairs = [(spec((n, L, E), "q"), spec((n, S, E), "k", True)),  # Q K^T [n, L, S]
                 (spec((n, L, S), "p"), spec((n, S, Ev), "v"))]  # P V [n, L, Ev]
    else:
        pairs = [(spec((n, L, S), "p", True), spec((n, L, Ev), "do")),  # dV = P^T dO
                 (spec((n, L, Ev), "do"), spec((n, S, Ev), "v", True)),  # dP = dO V^T
                 (spec((n, L, S), "ds"), spec((n, S, E), "k")),  # dQ = dS K
                 (spec((n, L, S), "ds", True), spec((n, L, E), "q"))]  # dK = dS^T Q
    return [(aten.bmm.default, pair, {}) for pair in pairs]


class ProductRecorder(TorchDispatchMode):
    """Records the matrix products (and convolutions) that reach the dispatcher: (op, args, kwargs)
    with every tensor a TensorSpec; fused attention as its products (`attention_products`)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in PRODUCT_OPS:
            as_spec = lambda x: TensorSpec.of(x) if isinstance(x, torch.Tensor) else x  # noqa: E731
            self.calls.append((func, tree_map(as_spec, args), tree_map(as_spec, kwargs)))
        elif _is_sdpa(func):
            self.calls.extend(attention_products(func, args, len(self.calls)))
        return func(*args, **kwargs)


class Floor:
    """The recorded products replayed on preallocated random tensors of the same layouts."""

    def __init__(self, calls: list[tuple]):
        specs = [x for call in calls for x in tree_leaves(call) if isinstance(x, TensorSpec)]
        extent: dict[tuple, int] = {}
        for x in specs:
            extent[x.storage] = max(extent.get(x.storage, 0), x.extent)
        first = {x.storage: x for x in reversed(specs)}
        buffers = {key: torch.empty(extent[key], dtype=x.dtype, device=x.device) for key, x in first.items()}
        for b in buffers.values():
            b.normal_() if b.is_floating_point() else b.zero_()

        def tensor(x):
            return buffers[x.storage].as_strided(x.shape, x.stride, x.offset) if isinstance(x, TensorSpec) else x

        self.calls = [(func, tree_map(tensor, args), tree_map(tensor, kwargs)) for func, args, kwargs in calls]
        self.ops = dict(Counter(str(func.overloadpacket.__name__) for func, _, _ in calls))
        self.mb = sum(b.numel() * b.element_size() for b in buffers.values()) / 2**20

    def __call__(self) -> None:
        for func, args, kwargs in self.calls:
            func(*args, **kwargs)


def record_products(forward: Callable[[], torch.Tensor]) -> list[tuple]:
    with ProductRecorder() as recorder:
        forward().backward()
    return recorder.calls


# ---------------------------------------------------------------- timing and memory of one model

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


def _mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode (products, convolutions, attention), also counting the CPU's fused attention
    (its backward as torch counts the GPU kernels': with the scores recomputed)."""
    return FlopCounterMode(display=False, custom_mapping={  # formulas of shapes
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda do, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(do, q, k, v)})


def flops_of(fn: Callable[[], None]) -> float:
    """GFLOP of running fn (`flop_counter`)."""
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops() / 1e9


class Timed:
    """One model set up for timing: the loss function under autocast, its trained parameters, AdamW."""

    def __init__(self, model: torch.nn.Module, loss_fn, device: torch.device, bf16: bool, compile_model: bool):
        self.model, self.loss_fn, self.device = model.to(device).train(), loss_fn, device
        self.run = torch.compile(model) if compile_model else model
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
        self.params = list(model.parameters())
        self.fwd_bwd: list[float] = []
        self.optim: list[float] = []
        self.opt: torch.optim.Optimizer | None = None

    def forward(self, eager: bool = False) -> torch.Tensor:
        with self.autocast():
            return self.loss_fn(self.model if eager else self.run)

    def step(self, timed: bool = True) -> None:
        """forward + backward, then the AdamW step (built on the first call: the parameters that got
        gradients are the trained ones)."""
        _sync(self.device)
        t0 = time.perf_counter()
        self.forward().backward()
        _sync(self.device)
        t1 = time.perf_counter()
        if self.opt is None:
            self.trained = [p for p in self.params if p.grad is not None]
            self.opt = torch.optim.AdamW(self.trained, lr=1e-4, fused=self.device.type == "cuda")
        self.opt.step()
        _sync(self.device)
        if timed:
            self.optim.append(time.perf_counter() - t1)
            self.fwd_bwd.append(t1 - t0)
        self.opt.zero_grad(set_to_none=True)

    def eval_loss(self) -> tuple[float, dict[str, torch.Tensor]]:
        """Loss and gradients by parameter name on the batch with dropout off (training mode restored)."""
        self.model.eval()
        try:
            loss = self.forward(eager=True)
            loss.backward()
            grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}
        finally:
            self.model.zero_grad(set_to_none=True)
            self.model.train()
        return loss.item(), grads

    def measure(self, peak_tflops: float | None) -> dict:
        """Medians of the timed steps; memory and GFLOP of one more step (FLOPs counted on the eager model)."""
        row = {"fwd_bwd_ms": 1e3 * statistics.median(self.fwd_bwd), "optim_ms": 1e3 * statistics.median(self.optim)}
        exclude = {p.untyped_storage().data_ptr() for p in self.params}
        before = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        eager = self.run is self.model
        with flop_counter() if eager else nullcontext() as counter:
            loss, saved = saved_activation_bytes(self.forward, exclude)
            loss.backward()
        _sync(self.device)
        optim_state = [t for s in self.opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        row.update(params_mb=_mb(self.params), grads_mb=_mb(p.grad for p in self.params if p.grad is not None),
                   optim_state_mb=_mb(optim_state), activations_mb=saved / 2**20)
        row["param_grad_adam_mb"] = row["params_mb"] + row["grads_mb"] + row["optim_state_mb"]
        row["peak_mb"] = row["param_grad_adam_mb"] + row["activations_mb"]  # CPU: no allocator statistics
        if self.device.type == "cuda":
            step_peak = (torch.cuda.max_memory_allocated(self.device) - before) / 2**20
            row["peak_mb"] = row["cuda_peak_mb"] = row["params_mb"] + row["optim_state_mb"] + step_peak
        self.opt.zero_grad(set_to_none=True)
        row["gflops_per_step"] = (counter.get_total_flops() / 1e9 if eager
                                  else flops_of(lambda: self.forward(eager=True).backward()))
        self.opt.zero_grad(set_to_none=True)
        row["achieved_gflops_per_s"] = row["gflops_per_step"] / (row["fwd_bwd_ms"] / 1e3)
        row["achieved_tflops"] = row["achieved_gflops_per_s"] / 1e3
        if peak_tflops:
            row["mfu"] = row["achieved_tflops"] / peak_tflops
        return row


def gradient_difference(grads_a: dict[str, torch.Tensor], grads_b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """Largest |difference| of two models' gradients of a parameter over the larger of that gradient's
    largest |value| and 1e-4 x the largest of any parameter (a mathematically zero gradient, as the key
    bias's under softmax's shift invariance, holds only rounding noise), over the parameters both name;
    and that parameter."""
    common = sorted(grads_a.keys() & grads_b.keys())
    if not common:
        return 0.0, ""
    scale = 1e-4 * max(g.abs().max().item() for g in grads_a.values())
    diffs = {n: (grads_a[n] - grads_b[n]).abs().max().item()
             / max(grads_a[n].abs().max().item(), grads_b[n].abs().max().item(), scale, 1e-30) for n in common}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def bench_variant(current: torch.nn.Module, baseline: torch.nn.Module | None, loss_fn, device: torch.device,
                  steps: int, warmup: int, bf16: bool = False, compile_model: bool = False,
                  peak_tflops: float | None = None) -> dict:
    """Time the current model, the baseline (if any) and the floor interleaved, step by step; then
    each one's memory and FLOPs, and the baseline-vs-current loss check."""
    cur = Timed(current, loss_fn, device, bf16, compile_model)
    base = Timed(baseline, loss_fn, device, bf16, compile_model) if baseline is not None else None
    row = {}
    if base is not None:  # before any optimiser step: the same weights
        (loss_b, grads_b), (loss_c, grads_c) = base.eval_loss(), cur.eval_loss()
        grad_diff, worst = gradient_difference(grads_b, grads_c)
        loss_ok = math.isclose(loss_c, loss_b, rel_tol=LOSS_RTOL[bf16])
        row.update(baseline_loss=loss_b, loss=loss_c, loss_abs_diff=abs(loss_c - loss_b),
                   grad_max_rel_diff=grad_diff, grad_worst_param=worst,
                   grads_compared=len(grads_b.keys() & grads_c.keys()),
                   same_loss=loss_ok and grad_diff <= GRAD_RTOL[bf16])
    floor = Floor(record_products(lambda: cur.forward(eager=True)))
    current.zero_grad(set_to_none=True)
    floor_times = []
    runs = [r for r in (base, cur) if r is not None]
    for i in range(max(warmup, 1) + steps):
        timed = i >= max(warmup, 1)
        for r in runs:
            r.step(timed)
        _sync(device)
        t0 = time.perf_counter()
        floor()
        _sync(device)
        if timed:
            floor_times.append(time.perf_counter() - t0)
    row.update(trained_params=sum(p.numel() for p in cur.trained), **cur.measure(peak_tflops))
    row.update(floor_ms=1e3 * statistics.median(floor_times), floor_gflops=flops_of(floor),
               floor_products=len(floor.calls), floor_ops=floor.ops, floor_tensors_mb=floor.mb)
    row["x_floor"] = row["fwd_bwd_ms"] / row["floor_ms"]
    row["floor_gflops_per_s"] = row["floor_gflops"] / (row["floor_ms"] / 1e3)
    if base is not None:
        row.update({f"baseline_{k}": v for k, v in base.measure(peak_tflops).items()})
        row["x_baseline"] = row["fwd_bwd_ms"] / row["baseline_fwd_bwd_ms"]
        row["activations_x"] = row["activations_mb"] / row["baseline_activations_mb"]
        row["peak_mb_x_baseline"] = row["peak_mb"] / row["baseline_peak_mb"]
    return row


def move_sigmas(model: torch.nn.Module, std: float) -> float | None:
    """Each orthogonal Sigma's free parameter (`...parametrizations.weight.original`; A = its strict lower
    triangle minus the transpose) drawn from N(0, std), so that Sigma = base @ expm(A) is where training
    takes it: at initialisation A = 0, where expm and its derivative cost least. -> the largest 1-norm of
    an A (None without Sigmas)."""
    g = torch.Generator().manual_seed(2)
    norms = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("parametrizations.weight.original"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
                a = p.tril(-1) - p.tril(-1).mT
                norms.append(float(a.abs().sum(-2).amax()))
    return max(norms) if norms else None


def run_section(title: str, builds: dict, device, steps, warmup, baseline: Baseline | None,
                without_cnns: bool = False, done: dict | None = None, sigma_std: float = 0.0,
                **kw) -> list[dict]:
    """builds: name -> (config, loss_fn). Adds ratios against the first entry. `done`: rows measured
    before by (configuration, loss function), taken as they are (and filled in). `sigma_std`: see
    `move_sigmas` (the same weights in the baseline)."""
    rows = []
    done = {} if done is None else done
    for name, (cfg, loss_fn) in builds.items():
        key = (json.dumps(cfg.to_dict(), sort_keys=True), loss_fn, without_cnns, sigma_std,
               json.dumps(kw, sort_keys=True))
        if key in done:
            rows.append({**done[key], "variant": name, "same_run_as": done[key]["variant"]})
            continue
        torch.manual_seed(0)
        model = PEMTModel(cfg)
        counts = model.parameter_counts()
        sigma_norm = move_sigmas(model, sigma_std)
        other = None
        if baseline is not None:
            torch.manual_seed(0)
            other = baseline.model(cfg)
            load_same_weights(model, other, baseline.rev)
        if without_cnns:  # not run by the loss: keep them out of memory and parameter figures
            for m in (model, other):
                if m is not None:
                    m.visual_cnn = m.audio_cnn = None
        row = {"variant": name, "transformer_params": counts["transformers"], "sigma_generator_1norm": sigma_norm,
               **bench_variant(model, other, loss_fn, device, steps, warmup, **kw)}
        rows.append(row)
        done[key] = row
        del model, other
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = rows[0]
    rows = [dict(row) for row in rows]  # the ratios are this section's
    for row in rows:
        for key in ("trained_params", "fwd_bwd_ms", "peak_mb", "param_grad_adam_mb"):
            row[f"{key}_ratio"] = row[key] / ref[key]
    print_section(title, rows)
    return rows


def fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def print_section(title: str, rows: list[dict]) -> None:
    columns = [("variant", "variant"), ("baseline_fwd_bwd_ms", "baseline ms"), ("fwd_bwd_ms", "current ms"),
               ("x_baseline", "x baseline"), ("floor_ms", "floor ms"), ("x_floor", "x floor"),
               ("baseline_activations_mb", "act MB base"), ("activations_mb", "act MB cur"),
               ("activations_x", "act x"), ("param_grad_adam_mb", "params+grads+adam MB"),
               ("optim_ms", "AdamW ms"), ("gflops_per_step", "GFLOP/step"),
               ("achieved_gflops_per_s", "GFLOP/s"), ("floor_gflops_per_s", "floor GFLOP/s"),
               ("loss_abs_diff", "loss |diff|"), ("same_loss", "same loss")]
    if any("cuda_peak_mb" in r for r in rows):
        columns[10:10] = [("baseline_cuda_peak_mb", "peak MB base"), ("cuda_peak_mb", "peak MB cur")]
    if any("mfu" in r for r in rows):
        columns.append(("mfu", "MFU"))
    if not any("baseline_fwd_bwd_ms" in r for r in rows):
        columns = [c for c in columns if c[0] not in ("baseline_fwd_bwd_ms", "x_baseline", "baseline_activations_mb",
                                                      "activations_x", "baseline_cuda_peak_mb", "loss_abs_diff",
                                                      "same_loss")]
    shown = [{k: fmt(r[k]) if k in r else "-" for k, _ in columns} for r in rows]
    print(f"\n== {title}", flush=True)
    print(format_table(shown, columns), flush=True)


# ---------------------------------------------------------------- single operations

def time_interleaved(runs: dict[str, Callable[[], object]], steps: int, calls: int = 10) -> dict[str, float]:
    """Median ms per call of each run, the runs taking turns: a warm-up round, then `steps` rounds of
    `calls` calls each (machine noise hits every run alike)."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps + 1):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[k].append((time.perf_counter() - t0) / calls)
    return {k: 1e3 * statistics.median(t[1:]) for k, t in times.items()}


def bench_matrix_exp_gradient(steps: int, n: int = 128, stds=(0.0, 0.003, 0.03, 0.3)) -> list[dict]:
    """expm forward + backward of one n x n Sigma generator A (the paper's rank), with a training-size
    incoming gradient (entries ~300), for A's entries ~N(0, std): torch's own backward (autograd of
    torch.linalg.matrix_exp: expm of the 2n x 2n block) and `_MatrixExp`'s (`expm_frechet`), timed
    interleaved (`time_interleaved`), each in float32 with its largest
    error relative to the largest entry of a float64 reference (torch's backward in float64)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for std in stds:
        X = torch.randn(n, n, generator=g, dtype=torch.float64) * std
        A64, G64 = X.tril(-1) - X.tril(-1).mT, torch.randn(n, n, generator=g, dtype=torch.float64) * 300
        A, G = A64.float().requires_grad_(), G64.float()
        (ref,) = torch.autograd.grad(torch.linalg.matrix_exp(A64.requires_grad_()), A64, G64)
        runs = {"torch": torch.linalg.matrix_exp, "current": _MatrixExp.apply}
        errors = {k: ((torch.autograd.grad(f(A), A, G)[0].double() - ref).abs().max() / ref.abs().max()).item()
                  for k, f in runs.items()}
        torch_ms, cur_ms = time_interleaved(
            {k: lambda f=f: torch.autograd.grad(f(A), A, G) for k, f in runs.items()}, steps).values()
        rows.append({"std": std, "a_1norm": float(A64.detach().abs().sum(-2).amax()), "torch_ms": torch_ms,
                     "current_ms": cur_ms, "x_torch": cur_ms / torch_ms, "torch_rel_error": errors["torch"],
                     "current_rel_error": errors["current"]})
    columns = [("std", "A entries std"), ("a_1norm", "A 1-norm"), ("torch_ms", "torch ms"),
               ("current_ms", "current ms"), ("x_torch", "x torch"), ("torch_rel_error", "torch fp32 error"),
               ("current_rel_error", "current fp32 error")]
    print(f"\n== expm forward + backward of one {n} x {n} Sigma generator, float32", flush=True)
    print(format_table([{k: f"{r[k]:.2e}" if "error" in k else fmt(r[k]) for k, _ in columns} for r in rows],
                       columns), flush=True)
    return rows


def bench_dropout(steps: int, p: float = 0.1) -> list[dict]:
    """Forward + backward of torch's nn.Dropout and the model's Dropout (models/dropout.py) on the
    hidden states and FFN activations of the paper Transformers' joint visual + audio layer
    (8 videos x 2 streams x 11 tokens), timed interleaved (`time_interleaved`)."""
    rows = []
    for shape in ((176, 768), (176, 3072)):
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        modules = {"torch": torch.nn.Dropout(p).train(), "current": Dropout(p).train()}
        torch_ms, cur_ms = time_interleaved(
            {k: lambda m=m: torch.autograd.grad(m(x), x, g) for k, m in modules.items()}, steps).values()
        rows.append({"shape": "x".join(map(str, shape)), "torch_ms": torch_ms, "current_ms": cur_ms,
                     "x_torch": cur_ms / torch_ms})
    columns = [("shape", "shape"), ("torch_ms", "nn.Dropout ms"), ("current_ms", "models.Dropout ms"),
               ("x_torch", "x torch")]
    print(f"\n== dropout p={p}, forward + backward, float32", flush=True)
    print(format_table([{k: fmt(r[k]) for k, _ in columns} for r in rows], columns), flush=True)
    return rows


# ---------------------------------------------------------------- targets

def target_lines(sections: dict[str, list[dict]], has_baseline: bool) -> list[tuple[bool | None, str]]:
    """(passed, text) per issue target, on each paper_transformers section; the loss check on every section."""
    lines: list[tuple[bool | None, str]] = []
    for key, rows in sections.items():
        if not any("variant" in r for r in rows):  # a single operation's timing: no model, no baseline
            continue
        if has_baseline and not all(r.get("same_loss", False) for r in rows):
            bad = [r["variant"] for r in rows if not r.get("same_loss", False)]
            lines.append((False, f"{key}: baseline and current compute the same loss (differs: {', '.join(bad)})"))
        if not key.startswith("paper_transformers"):
            continue
        by = {r["variant"]: r for r in rows}
        for name, limit in (("lowrank", 0.75), ("unshared", 0.95), ("cross_layer", 0.95)):
            text = f"{key}: {name} time <= {limit}x baseline"
            lines.append((by[name]["x_baseline"] <= limit, f"{text} ({by[name]['x_baseline']:.3f}x)")
                         if has_baseline else (None, f"{text} (n/a: needs --baseline)"))
        for name, r in by.items():
            lines.append((r["x_floor"] <= 1.5, f"{key}: {name} time <= 1.5x floor ({r['x_floor']:.3f}x)"))
        text = f"{key}: lowrank activation memory <= 0.8x baseline"
        lines.append((by["lowrank"]["activations_x"] <= 0.8, f"{text} ({by['lowrank']['activations_x']:.3f}x)")
                     if has_baseline else (None, f"{text} (n/a: needs --baseline)"))
    return lines


# ---------------------------------------------------------------- main

def parse_threads(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise argparse.ArgumentTypeError(f"--threads {text!r}: comma-separated positive thread counts, e.g. 1,2")
    return threads


def parse_sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"--sections {text!r}: choose from {', '.join(SECTIONS)}")
    return names


def run_sections(args, device: torch.device, baseline: Baseline | None, results: dict) -> None:
    sec = results["sections"]
    steps, warmup = results["meta"]["steps"], results["meta"]["warmup"]
    videos, clips = results["meta"]["paper_batch"]
    small, paper = project_model_config(ROOT / "conf", "base"), ModelConfig()
    cpu_sections = [s for s in args.sections if s in CPU_SECTIONS]
    for threads in args.threads if device.type == "cpu" else args.threads[:1]:
        done: dict = {}  # the same model and loss in two sections (lowrank = its default orthogonal map): run once
        with torch_threads(threads):
            suffix, where = f"_threads{threads}", f"{threads} thread{'s' * (threads > 1)}"
            if "small_with_cnns" in cpu_sections:
                video, audio = video_batch(2, small.max_clips, **BASE_CLIPS, device=device)
                sec["small_with_cnns" + suffix] = run_section(
                    f"small config with CNNs (conf/base), 2 videos x {small.max_clips} clips, {where}",
                    {n: (variant(small, n), full_model_loss(video, audio)) for n in VARIANTS},
                    device, steps, warmup, baseline, sigma_std=args.sigma_std)
            loss = transformer_loss(paper, videos, clips, device)
            if "paper_transformers" in cpu_sections:
                sec["paper_transformers" + suffix] = run_section(
                    f"paper Transformers without CNNs, {videos} videos x {clips} clips, {where}",
                    {n: (variant(paper, n), loss) for n in VARIANTS}, device, steps, warmup, baseline,
                    without_cnns=True, done=done, sigma_std=args.sigma_std)
            if "orthogonal_maps" in cpu_sections:
                sec["orthogonal_maps" + suffix] = run_section(
                    f"low-rank paper Transformers by orthogonal map, {videos} videos x {clips} clips, {where}",
                    {m: (variant(paper, "lowrank", orthogonal_map=m), loss)
                     for m in ("matrix_exp", "cayley", "householder")}, device, steps, warmup, baseline,
                    without_cnns=True, done=done, sigma_std=args.sigma_std)
            if "matrix_exp_gradient" in cpu_sections:
                sec["matrix_exp_gradient" + suffix] = bench_matrix_exp_gradient(steps)
            if "dropout" in cpu_sections:
                sec["dropout" + suffix] = bench_dropout(steps)

    if device.type == "cuda" and "paper_full_bf16" in args.sections:
        video, audio = video_batch(args.gpu_videos, paper.max_clips, **PAPER_CLIPS, device=device)
        for compiled in (False, True) if not args.no_compile else (False,):
            key = "paper_full_bf16" + ("_compiled" if compiled else "")
            sec[key] = run_section(
                f"paper model, bf16 autocast{', torch.compile' if compiled else ''}, "
                f"{args.gpu_videos} videos x {paper.max_clips} clips",
                {n: (variant(paper, n), full_model_loss(video, audio)) for n in VARIANTS},
                device, steps, warmup + compiled, baseline, sigma_std=args.sigma_std, bf16=True, compile_model=compiled,
                peak_tflops=args.peak_tflops)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller paper batch")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_model.json"))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=parse_threads, default=[1, 2],
                        help="CPU thread counts, comma-separated: each CPU section runs once per count")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 7; --quick 2)")
    parser.add_argument("--sections", type=parse_sections, default=list(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all; the last: CUDA only)")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="git revision whose model code is timed against the current tree's (e.g. e6888a4)")
    parser.add_argument("--targets", action="store_true", help="print pass/fail per issue target")
    parser.add_argument("--gpu-videos", type=int, default=4,
                        help="videos per batch in the full paper model section (CUDA); the "
                        "visual CNN saves ~0.66 GB of fp32 activations per clip (CPU measure)")
    parser.add_argument("--sigma-std", type=float, default=0.03,
                        help="std of the orthogonal Sigmas' free parameters (move_sigmas; 0: as initialised, "
                        "A = 0). Default 0.03 ~ AdamW's random-walk drift over conf/paper's training, "
                        "lr 1e-4 x sqrt(100000 steps)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (CUDA)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="accelerator bf16 dense peak for MFU (H100 SXM: 989)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    steps = args.steps or (2 if args.quick else 7)
    warmup = 1  # after the loss check and the product recording, which run each model once already
    videos, clips = (2, 10) if args.quick else (8, 10)
    results = {"meta": {"torch": torch.__version__, "device": str(device),
                        "device_name": torch.cuda.get_device_name(device)
                        if device.type == "cuda" else platform.processor() or platform.machine(),
                        "threads": args.threads, "steps": steps, "warmup": warmup, "quick": args.quick,
                        "paper_batch": [videos, clips], "sections": args.sections, "baseline": args.baseline,
                        "sigma_std": args.sigma_std},
               "sections": {}}
    with git_worktree(args.baseline) if args.baseline else nullcontext() as tree:
        baseline = None
        if tree is not None:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()
            results["meta"]["baseline_commit"] = sha
            baseline = Baseline(args.baseline, import_revision(tree / "src"))
            print(f"baseline {args.baseline} ({sha[:10]}): {inspect.getfile(baseline.modules[PACKAGE])}", flush=True)
        run_sections(args, device, baseline, results)

    targets = target_lines(results["sections"], args.baseline is not None)
    results["targets"] = [{"passed": passed, "target": text} for passed, text in targets]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(results, indent=2))
    if args.targets:
        print("\n== targets")
        if not targets:
            print("(no target concerns these sections)")
        for passed, text in targets:
            print(f"{'n/a ' if passed is None else 'PASS' if passed else 'FAIL'}  {text}")
    print(f"\nwrote {out}")
    mismatched = [f"{key}/{r['variant']}" for key, rows in results["sections"].items() for r in rows
                  if not r.get("same_loss", True)]
    if mismatched:
        raise SystemExit(f"the current model's loss or gradients differ from the baseline {args.baseline}'s: "
                         + ", ".join(mismatched))


if __name__ == "__main__":
    main()

"""The report's plain-language conclusion, derived from the numbers by explicit rules (no Kedro).

Nothing is written in advance: every sentence names what the numbers say, and the rules are the
same whichever variant wins. `RULES` is printed under the conclusion in the report.

Comparison stream: when every variant has a ``multimodal`` probe stream, fusions are compared on
it; otherwise each variant is represented by its best stream (highest mean pretrained top-1), and
the sentence names that stream.

Noise rule: a difference between two means is "beyond the seed spread" when both sides have at
least two seeds and |difference| > std_a + std_b (sample stds over seeds); otherwise it is
"within noise" (with one seed the spread is unknown, so no difference is claimed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pemt_pipeline.evaluation.retrieval import RETRIEVAL_DIRECTIONS

from .stats import (Stat, finite, fmt_int, fmt_num, fmt_pct, fmt_points, fmt_stat,
                    mean_recall1_stat, probe_stat, probe_streams, run_stat)

RULES = (
    "How these sentences are drawn: fusions are compared on the multimodal probe stream when every "
    "variant has one, otherwise on each variant's best stream (highest mean pretrained top-1). "
    "A difference counts as beyond the seed spread only when both sides have at least two seeds "
    "and it exceeds the sum of their standard deviations; otherwise it is called within noise. "
    "Parameter savings compare each shared variant with the unshared variant (share_transformers "
    "none, share_layers false) of the same fusion, or of another fusion when its own was not run. "
    "Retrieval is summarised by recall@1 averaged over both directions. Pruning deltas compare "
    "each target with the unpruned model (one model per target: no seed spread)."
)


# ----------------------------------------------------------------------------- shared helpers

def noise_verdict(a: Stat, b: Stat) -> tuple[bool, str]:
    """(beyond the seed spread?, phrase) for the difference a.mean - b.mean; the seed spread is
    std_a + std_b (needs two seeds on each side)."""
    if a.n < 2 or b.n < 2:
        return False, "within noise, as a single seed gives no spread to compare with"
    spread = a.std + b.std
    diff = abs(a.mean - b.mean)
    if diff > spread:
        return True, f"beyond the seed spread of {100 * spread:.1f} points"
    return False, f"within noise, the seed spread being {100 * spread:.1f} points"


def comparison_streams(variants: Mapping[str, Mapping]) -> dict[str, str | None]:
    """The probe stream each variant is compared on (see the module docstring)."""
    if all("multimodal" in probe_streams(v) for v in variants.values()):
        return {name: "multimodal" for name in variants}
    out: dict[str, str | None] = {}
    for name, v in variants.items():
        best, best_mean = None, -1.0
        for s in probe_streams(v):
            st = probe_stat(v, "pretrained", s)
            if st is not None and st.ok and st.mean > best_mean:
                best, best_mean = s, st.mean
        out[name] = best
    return out


def unshared_reference(variants: Mapping[str, Mapping], name: str) -> str | None:
    """The unshared variant `name` is compared with: same fusion first, else the first unshared
    variant; None when there is none (or `name` is itself the reference of its fusion)."""
    unshared = [n for n, v in variants.items()
                if v["model"]["share_transformers"] == "none" and not v["model"]["share_layers"]]
    if name in unshared:
        return None
    fusion = variants[name]["model"]["fusion"]
    same = [n for n in unshared if variants[n]["model"]["fusion"] == fusion]
    return (same or unshared or [None])[0]


def sharing_label(model: Mapping) -> str:
    parts = []
    if model["share_layers"]:
        parts.append("cross-layer sharing")
    st = model["share_transformers"]
    if st == "lowrank":
        parts.append(f"low-rank cross-Transformer sharing at rank {model['rank']}")
    elif st == "full":
        parts.append("full cross-Transformer sharing")
    elif st != "none":
        parts.append(f"cross-Transformer sharing {st!s}")
    return " + ".join(parts) or "no sharing"


def _common_stream(a: Mapping, b: Mapping) -> str | None:
    """multimodal if both have it, else the common stream where `b` (the reference) is best."""
    common = [s for s in probe_streams(a) if s in probe_streams(b)]
    if not common:
        return None
    if "multimodal" in common:
        return "multimodal"
    return max(common, key=lambda s: _mean_or(probe_stat(b, "pretrained", s), -1.0))


def _mean_or(stat: Stat | None, default: float) -> float:
    return stat.mean if stat is not None and stat.ok else default


def _delta_phrase(a: Stat | None, b: Stat | None, what: str) -> str:
    if a is None or b is None or not a.ok or not b.ok:
        return f"{what} cannot be compared (missing values)"
    _, verdict = noise_verdict(a, b)
    return f"{what} changes by {fmt_points(a.mean - b.mean)}, {verdict}"


# ----------------------------------------------------------------------------- fusion rules

def _probe_winner(variants: Mapping[str, Mapping], streams: Mapping[str, str | None]) -> str:
    scored = []
    for name, v in variants.items():
        s = streams[name]
        st = probe_stat(v, "pretrained", s) if s else None
        if st is not None and st.ok:
            scored.append((st.mean, name, s, st))
    if not scored:
        return "No variant has a finite linear-probe top-1, so no fusion can be ranked."
    scored.sort(key=lambda t: -t[0])
    _, best, s1, st1 = scored[0]
    fusion1 = variants[best]["model"]["fusion"]
    if len(scored) == 1:
        return (f"Only {best} ({fusion1} fusion) has a probe result: {fmt_stat(st1, 'pct')} top-1 "
                f"on {s1}; there is nothing to compare it with.")
    _, second, s2, st2 = scored[1]
    fusion2 = variants[second]["model"]["fusion"]
    diff = st1.mean - st2.mean
    if diff == 0:
        return (f"{best} ({fusion1} fusion) and {second} ({fusion2} fusion) tie on mean linear-probe"
                f" top-1 ({fmt_stat(st1, 'pct')} on {s1}, {fmt_stat(st2, 'pct')} on {s2}).")
    _, verdict = noise_verdict(st1, st2)
    on = f"on {s1}" if s1 == s2 else f"on its {s1} stream"
    return (f"{best} ({fusion1} fusion) gives the best mean linear-probe top-1, "
            f"{fmt_stat(st1, 'pct')} {on}, {fmt_points(diff)} ahead of the runner-up {second} "
            f"({fusion2} fusion, {fmt_stat(st2, 'pct')} on {s2}); the difference is {verdict}.")


def _retrieval_winner(variants: Mapping[str, Mapping]) -> str:
    scored = [(st.mean, name, st) for name, v in variants.items()
              if (st := mean_recall1_stat(v)).ok]
    if not scored:
        return "No variant has finite retrieval recall@1."
    scored.sort(key=lambda t: -t[0])
    _, best, st1 = scored[0]
    chance = [sum(r[d]["chance_recall@1"] for d in RETRIEVAL_DIRECTIONS) / 2
              for r in (run["retrieval"] for run in variants[best]["runs"])
              if all(finite(r[d]["chance_recall@1"]) for d in RETRIEVAL_DIRECTIONS)]
    chance_txt = f" (chance {fmt_pct(sum(chance) / len(chance))})" if chance else ""
    head = (f"For audio-visual retrieval, {best} ({variants[best]['model']['fusion']} fusion) has "
            f"the highest recall@1 averaged over both directions, {fmt_stat(st1, 'pct')}"
            f"{chance_txt}")
    if len(scored) == 1:
        return head + "."
    _, second, st2 = scored[1]
    _, verdict = noise_verdict(st1, st2)
    return (head + f", {fmt_points(st1.mean - st2.mean)} over {second} "
            f"({fmt_stat(st2, 'pct')}); the difference is {verdict}.")


def _sharing(variants: Mapping[str, Mapping]) -> list[str]:
    out = []
    shared = [n for n, v in variants.items()
              if v["model"]["share_transformers"] != "none" or v["model"]["share_layers"]]
    if not shared:
        return out
    if not any(unshared_reference(variants, n) for n in shared):
        return ["No unshared variant (share_transformers none, share_layers false) was run, so "
                "the parameter saving of sharing has no reference."]
    for name in shared:
        ref = unshared_reference(variants, name)
        v, r = variants[name], variants[ref]
        pv, pr = v["parameters"]["transformers"], r["parameters"]["transformers"]
        if not (finite(pv) and finite(pr)) or pv <= 0:
            continue
        ratio = pr / pv
        size = (f"{ratio:.1f} times fewer Transformer parameters than" if ratio >= 1
                else f"{1 / ratio:.1f} times more Transformer parameters than")
        other = "" if r["model"]["fusion"] == v["model"]["fusion"] else \
            f" (a {r['model']['fusion']} fusion model: no unshared {v['model']['fusion']} variant)"
        stream = _common_stream(v, r)
        probe = _delta_phrase(probe_stat(v, "pretrained", stream) if stream else None,
                              probe_stat(r, "pretrained", stream) if stream else None,
                              f"probe top-1 on {stream}")
        retr = _delta_phrase(mean_recall1_stat(v), mean_recall1_stat(r), "mean recall@1")
        out.append(f"{name} ({sharing_label(v['model'])}) uses {size} {ref}{other} "
                   f"({fmt_int(pv)} vs {fmt_int(pr)}, {100 * (1 - pv / pr):.1f}% fewer); "
                   f"{probe}; {retr}.")
    return out


def _pretraining(variants: Mapping[str, Mapping], streams: Mapping[str, str | None]) -> list[str]:
    out = []
    for name, v in variants.items():
        s = streams[name]
        pre = probe_stat(v, "pretrained", s) if s else None
        rnd = probe_stat(v, "random_init", s) if s else None
        if pre is None or rnd is None or not pre.ok or not rnd.ok:
            out.append(f"{name}: no random-init probe to compare pretraining with.")
            continue
        wins = total = 0
        for stream in probe_streams(v):
            a, b = probe_stat(v, "pretrained", stream), probe_stat(v, "random_init", stream)
            if a is not None and b is not None and a.ok and b.ok:
                total += 1
                wins += a.mean > b.mean
        beyond, verdict = noise_verdict(pre, rnd)
        diff = pre.mean - rnd.mean
        if diff > 0:
            head = ("pretraining beats random init" if beyond
                    else "pretraining is ahead of random init, but not clearly")
        elif diff < 0:
            head = ("pretraining does not beat random init: random init is ahead" if beyond
                    else "pretraining does not beat random init")
        else:
            head = "pretraining and random init tie"
        out.append(f"{name}: {head} on {s}, {fmt_stat(pre, 'pct')} vs {fmt_stat(rnd, 'pct')} "
                   f"({fmt_points(diff)}), {verdict}; pretrained is ahead on {wins} of {total} "
                   f"probed streams.")
    return out


def _cost(variants: Mapping[str, Mapping]) -> list[str]:
    steps = {n: run_stat(v, "step_seconds") for n, v in variants.items()}
    mem = {n: run_stat(v, "peak_memory_mb") for n, v in variants.items()}
    steps = {n: s for n, s in steps.items() if s.ok}
    mem = {n: s for n, s in mem.items() if s.ok}
    out = []
    if len(steps) >= 2:
        fast = min(steps, key=lambda n: steps[n].mean)
        slow = max(steps, key=lambda n: steps[n].mean)
        ratio = steps[slow].mean / steps[fast].mean if steps[fast].mean > 0 else float("nan")
        out.append(f"Cost: {fast} has the shortest optimiser step "
                   f"({fmt_num(1000 * steps[fast].mean)} ms) and {slow} the longest "
                   f"({fmt_num(1000 * steps[slow].mean)} ms, {fmt_num(ratio)} times as long).")
    elif steps:
        (n, s), = steps.items()
        out.append(f"Cost: {n} takes {fmt_num(1000 * s.mean)} ms per optimiser step.")
    if len(mem) >= 2:
        lo = min(mem, key=lambda n: mem[n].mean)
        hi = max(mem, key=lambda n: mem[n].mean)
        out.append(f"Peak memory ranges from {fmt_num(mem[lo].mean)} MB ({lo}) to "
                   f"{fmt_num(mem[hi].mean)} MB ({hi}).")
    elif mem:
        (n, s), = mem.items()
        out.append(f"Peak memory of {n} is {fmt_num(s.mean)} MB.")
    return out


# ----------------------------------------------------------------------------- pruning rules

def pruning_stream(pruning: Mapping) -> str:
    probe = pruning["base"]["probe"]
    if "multimodal" in probe:
        return "multimodal"
    return max(probe, key=lambda s: probe[s]["top1"] if finite(probe[s]["top1"]) else -1.0)


def mean_recall1(retrieval: Mapping) -> float | None:
    """Mean recall@1 of the two directions; None when either is missing (retrieval skipped) or not finite."""
    a, b = (retrieval.get(d, {}).get("recall@1") for d in RETRIEVAL_DIRECTIONS)
    return (a + b) / 2 if finite(a) and finite(b) else None


def _diff(a: Any, b: Any) -> float | None:
    return a - b if finite(a) and finite(b) else None


def _pruning(pruning: Mapping) -> list[str]:
    base = pruning["base"]
    if not pruning["targets"]:
        return ["The pruning search produced no target."]
    stream = pruning_stream(pruning)
    device = base.get("latency_device", "cpu")
    out = []
    for t in pruning["targets"]:
        ops = [e["op"] for depths in t["architecture"].values() for e in depths]
        n_conv3, n_conv1, n_skip = ops.count("conv3"), ops.count("conv1"), ops.count("skip")
        units = [e["ffn_units"] for depths in t["architecture"].values() for e in depths]
        ffn_kept = (sum(units) / (len(units) * t["ffn_full"])
                    if units and finite(t["ffn_full"]) and t["ffn_full"] > 0 else None)
        ratio = t["flops"] / base["flops"] if finite(t["flops"]) and finite(base["flops"]) \
            and base["flops"] > 0 else t["flops_ratio"]
        fewer = f", {1 / ratio:.1f} times fewer" if finite(ratio) and 0 < ratio < 1 else ""
        latency = ""
        if finite(t["latency_ms"]) and finite(base["latency_ms"]):
            latency = (f"; {device} latency {fmt_num(t['latency_ms'])} ms vs "
                       f"{fmt_num(base['latency_ms'])} ms")
        probe = _diff(t["probe"].get(stream, {}).get("top1"), base["probe"][stream]["top1"])
        r1 = _diff(mean_recall1(t["retrieval"]), mean_recall1(base["retrieval"]))
        arch = (f"{len(ops) - ops.count('attention')} of {len(ops)} attention layers were replaced "
                f"({n_conv3} conv3, {n_conv1} conv1, {n_skip} skipped)")
        if ffn_kept is not None:
            arch += f" and {100 * ffn_kept:.0f}% of the FFN units kept"
        out.append(f"Pruning to FLOPs target {t['target']:g}: FLOPs are {fmt_pct(ratio)} of the "
                   f"unpruned model{fewer}{latency}; {arch}; probe top-1 on {stream} changes by "
                   f"{fmt_points(probe)} and mean recall@1 by {fmt_points(r1)}.")
    return out


# ----------------------------------------------------------------------------- entry point

def draw_conclusion(fusion: Mapping | None, pruning: Mapping | None = None) -> list[str]:
    """The conclusion sentences for validated inputs (see `schema`); either may be None."""
    out: list[str] = []
    if fusion is not None:
        variants = fusion["variants"]
        streams = comparison_streams(variants)
        out += [_probe_winner(variants, streams), _retrieval_winner(variants)]
        out += _sharing(variants)
        out += _pretraining(variants, streams)
        out += _cost(variants)
    if pruning is not None:
        out += _pruning(pruning)
    return out

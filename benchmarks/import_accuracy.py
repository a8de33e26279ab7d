"""How closely the imported authors' checkpoint reproduces the authors' outputs (accuracy, not speed).

    python benchmarks/import_accuracy.py [--fixture ../shared/fixtures/avbert_small] [--out PATH]

The fixture holds a checkpoint written by the authors' own code, the inputs, and the authors' outputs in
float64 (`expected.*`) and float32 (`expected_f32.*`). Each dtype imports into a model of that dtype
(`pemt_pipeline.models.authors`) and prints the largest |ours - authors'| per output, with the
tolerance the issue sets (float64: 1e-12 CNN, 1e-9 Transformer; float32: 1e-4). JSON to
benchmarks/results/import_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from pemt_pipeline.atomic import atomic_open
from pemt_pipeline.models import ModelConfig
from pemt_pipeline.models.authors import checkpoint_model_config, import_checkpoint, parse_checkpoint
from pemt_pipeline.models.files import load_state

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {torch.float64: (1e-12, 1e-9), torch.float32: (1e-4, 1e-4)}


def outputs(model, video: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        v, a = model.embed_clips(video, audio[:, :, 0])
        streams = model.contextualize(v, a)
    full = {k: torch.cat([s.summary[:, None], s.clips], 1) for k, s in streams.items()}
    return {"visual.cnn_embedding": v, "audio.cnn_embedding": a, "visual.output": full["visual"],
            "audio.output": full["audio"],
            "multimodal.output": torch.cat([full["multimodal_visual"], full["multimodal_audio"]], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", type=Path, default=ROOT.parent / "shared" / "fixtures" / "avbert_small")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "import_accuracy.json")
    args = parser.parse_args()
    ckpt = parse_checkpoint(load_state(args.fixture / "checkpoint.pyth", "authors' checkpoint"), str(args.fixture))
    cfg, _ = checkpoint_model_config(ckpt, ModelConfig(), yaml.safe_load((args.fixture / "config.yaml").read_text()))
    inputs = load_file(args.fixture / "inputs.safetensors")
    rows = []
    for dtype, prefix in ((torch.float64, "expected."), (torch.float32, "expected_f32.")):
        model, _ = import_checkpoint(ckpt, cfg, dtype)
        ours = outputs(model, inputs["input.visual"].to(dtype), inputs["input.audio"].to(dtype))
        for name, x in ours.items():
            tol = TOLERANCE[dtype][0 if "cnn" in name else 1]
            err = float((x - inputs[prefix + name].to(dtype)).abs().max())
            rows.append({"dtype": str(dtype).removeprefix("torch."), "output": name, "max_abs_error": err,
                         "tolerance": tol, "within": err <= tol})
    print(f"{'dtype':8} {'output':22} {'max |ours - authors|':>22} {'tolerance':>10}")
    for r in rows:
        print(f"{r['dtype']:8} {r['output']:22} {r['max_abs_error']:22.3e} {r['tolerance']:10.0e}"
              + ("" if r["within"] else "  EXCEEDED"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "w") as f:
        f.write(json.dumps({"fixture": str(args.fixture), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Parameter counts of the configured model, of every fusion x sharing variant, and the CNNs'
parameters and FLOPs per clip (with the project's default CNN options and the authors' released ones).

    python -m pemt_pipeline.param_table [--env paper] [--conf-source conf] [--json]

The model configuration is the project's (conf/base merged with conf/<env>, as `kedro run --env`
reads it); the clip sizes are ingestion's frames_per_clip, n_mels, mel_frames and embedding's crop.
Models are built on the meta device (nothing allocated); a tensor shared by several modules counts
once; the orthogonal Sigma counts as its O x O `original` tensor.
"""

from __future__ import annotations

import argparse
import json

from pemt_pipeline.models import ModelConfig
from pemt_pipeline.models.param_table import (CNN_COLUMNS, VARIANT_COLUMNS, cnn_table, format_table, meta_model,
                                              variant_table)
from pemt_pipeline.project_config import project_parameters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="local",
                        help="conf environment merged over conf/base (default: local)")
    parser.add_argument("--conf-source", default="conf", help="the project's conf directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)

    params = project_parameters(args.conf_source, args.env)
    cfg = ModelConfig.from_dict(params["model"])
    ingestion = params["ingestion"]
    sizes = {"frames": ingestion["frames_per_clip"], "crop": params["embedding"]["crop"],
             "n_mels": ingestion["n_mels"], "mel_frames": ingestion["mel_frames"]}
    components = meta_model(cfg).parameter_counts()
    rows = variant_table(cfg)
    cnns = cnn_table(cfg, **sizes)
    if args.json:
        print(json.dumps({"env": args.env, "config": cfg.to_dict(), "components": components,
                          "variants": rows, "clip_sizes": sizes, "cnns": cnns}, indent=2))
        return
    print(f"Configured model (env {args.env}: fusion={cfg.fusion}, share_layers={cfg.share_layers},"
          f" share_transformers={cfg.share_transformers}, rank={cfg.rank})")
    print(format_table([{"component": k, "parameters": v} for k, v in components.items()],
                       [("component", "component"), ("parameters", "parameters")]))
    t = cfg.transformer
    print(f"\nEvery fusion x sharing variant (hidden {t.hidden}, FFN {t.ffn}, {t.n_layers} layers, "
          f"rank {cfg.rank}); reductions vs. the unshared model of the same fusion")
    print(format_table(rows, VARIANT_COLUMNS))
    print(f"\nCNNs per clip ({sizes['frames']} frames of {sizes['crop']} x {sizes['crop']}; log-mel "
          f"{sizes['n_mels']} x {sizes['mel_frames']}); FLOPs = 2 x multiply-adds")
    print(format_table(cnns, CNN_COLUMNS))


if __name__ == "__main__":
    main()

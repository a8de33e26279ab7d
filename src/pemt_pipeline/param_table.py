"""Parameter counts of the configured model, and of every fusion x sharing variant.

    python -m pemt_pipeline.param_table [--env paper] [--conf-source conf] [--json]

The model configuration is the project's (conf/base merged with conf/<env>, as `kedro run --env`
reads it). Models are built on the meta device (nothing allocated); a tensor shared by several
modules counts once; the orthogonal Sigma counts as its O x O `original` tensor.
"""

from __future__ import annotations

import argparse
import json

from pemt_pipeline.models.param_table import VARIANT_COLUMNS, format_table, meta_model, variant_table
from pemt_pipeline.project_config import project_model_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="local",
                        help="conf environment merged over conf/base (default: local)")
    parser.add_argument("--conf-source", default="conf", help="the project's conf directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)

    cfg = project_model_config(args.conf_source, args.env)
    components = meta_model(cfg).parameter_counts()
    rows = variant_table(cfg)
    if args.json:
        print(json.dumps({"env": args.env, "config": cfg.to_dict(), "components": components,
                          "variants": rows}, indent=2))
        return
    print(f"Configured model (env {args.env}: fusion={cfg.fusion}, share_layers={cfg.share_layers},"
          f" share_transformers={cfg.share_transformers}, rank={cfg.rank})")
    print(format_table([{"component": k, "parameters": v} for k, v in components.items()],
                       [("component", "component"), ("parameters", "parameters")]))
    t = cfg.transformer
    print(f"\nEvery fusion x sharing variant (hidden {t.hidden}, FFN {t.ffn}, {t.n_layers} layers, "
          f"rank {cfg.rank}); reductions vs. the unshared model of the same fusion")
    print(format_table(rows, VARIANT_COLUMNS))


if __name__ == "__main__":
    main()

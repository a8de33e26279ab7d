"""Parameter counts: METHOD.md's table at the paper's size, components, the param_table CLI."""

import json
from pathlib import Path

import pytest

from pemt_pipeline.models import ModelConfig, PEMTModel
from pemt_pipeline.models.param_table import (RELEASED_CNN_OPTIONS, SHARING_VARIANTS, meta_model, variant_table,
                                              with_cnn_options)
from pemt_pipeline.project_config import project_model_config
from pemt_pipeline.param_table import main

CONF = Path(__file__).resolve().parents[2] / "conf"

# METHOD.md section 2: (fusion, share_layers, share_transformers) -> Transformer parameters
PAPER_TABLE = {
    ("mid", False, "none"): 127_581_696,
    ("mid", True, "none"): 21_263_616,
    ("mid", True, "full"): 7_087_872,
    ("mid", True, "lowrank"): 3_843_840,
    ("mid", False, "lowrank"): 23_063_040,
    ("late", False, "none"): 85_054_464,
    ("late", True, "lowrank"): 2_860_800,
    ("early", False, "none"): 42_527_232,
    ("early", True, "none"): 7_087_872,
    ("early", True, "lowrank"): 1_877_760,
}


@pytest.mark.parametrize(("fusion", "share_layers", "share_transformers"), list(PAPER_TABLE))
def test_paper_parameter_table(fusion, share_layers, share_transformers):
    cfg = ModelConfig(fusion=fusion, share_layers=share_layers,
                      share_transformers=share_transformers)  # defaults: the paper's sizes
    assert (cfg.transformer.hidden, cfg.transformer.ffn, cfg.transformer.n_layers,
            cfg.transformer.n_heads, cfg.rank) == (768, 3072, 6, 12, 128)
    counts = meta_model(cfg).parameter_counts()
    assert counts["transformers"] == PAPER_TABLE[fusion, share_layers, share_transformers]


def test_paper_reduction_and_shared_part():
    rows = {(r["fusion"], r["share_layers"], r["share_transformers"]): r
            for r in variant_table(ModelConfig())}
    assert round(100 * rows["mid", True, "lowrank"]["transformer_reduction"], 1) == 97.0
    counts = meta_model(ModelConfig()).parameter_counts()
    # shared by the 3 Transformers: the six U's with biases and the two LayerNorms
    d, f, o = 768, 3072, 128
    assert counts["transformers_shared"] == 5 * (d * o + d) + (f * o + f) + 4 * d
    # each Transformer uses the shared part and its private V, Sigma
    private = 4 * (o * o + d * o) + (o * o + d * o) + (o * o + f * o)
    assert counts["transformer_visual"] == counts["transformers_shared"] + private
    assert counts["transformers"] == counts["transformers_shared"] + 3 * private
    assert counts["visual_cnn"] > 30e6 and counts["audio_cnn"] > 4e6


def test_meta_counts_equal_real_counts(make_config):
    """The meta-device build (no orthogonal parametrisation) counts what a real build has."""
    for fusion in ("early", "mid", "late"):
        for share_layers, share_transformers in SHARING_VARIANTS:
            cfg = make_config(fusion=fusion, share_layers=share_layers,
                              share_transformers=share_transformers)
            assert meta_model(cfg).parameter_counts() == PEMTModel(cfg).parameter_counts()


def test_orthogonal_sigma_counts_as_rank_squared(make_config):
    model = PEMTModel(make_config())
    names = [n for n, _ in model.named_parameters() if "sigma" in n]
    assert names and all(n.endswith("sigma.parametrizations.weight.original") for n in names)
    assert {tuple(p.shape) for n, p in model.named_parameters() if "sigma" in n} == {(8, 8)}


def test_cnn_output_dims():
    model = meta_model(ModelConfig())
    assert model.visual_cnn.out_dim == 2048 and model.audio_cnn.out_dim == 1024


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_param_table_cli_deep_merges_env(tmp_path, capsys):
    _write(tmp_path / "base" / "parameters_model.yml", """
model:
  fusion: mid
  rank: 4
  visual: {width: 4, depths: [1, 1, 1, 1]}
  audio: {width: 4, depths: [1, 1, 1, 1]}
  transformer: {hidden: 16, n_layers: 2, n_heads: 2, ffn: 32}
""")
    _write(tmp_path / "base" / "parameters_clips.yml", """
ingestion: {frames_per_clip: 4, n_mels: 16, mel_frames: 16}
embedding: {crop: 32}
""")
    _write(tmp_path / "big" / "parameters_model.yml", "model:\n  transformer: {hidden: 32}\n")
    main(["--conf-source", str(tmp_path), "--env", "big", "--json"])
    out = json.loads(capsys.readouterr().out)
    t = out["config"]["transformer"]
    assert (t["hidden"], t["ffn"], t["n_layers"]) == (32, 32, 2)  # merged key by key
    assert out["config"]["rank"] == 4
    assert len(out["variants"]) == 18
    unshared = next(r for r in out["variants"] if r["fusion"] == "mid"
                    and r["share_transformers"] == "none" and not r["share_layers"])
    d, f = 32, 32
    assert unshared["transformers"] == 3 * 2 * (4 * (d * d + d) + 2 * d * f + f + d + 4 * d)
    assert out["clip_sizes"] == {"frames": 4, "crop": 32, "n_mels": 16, "mel_frames": 16}
    assert {(r["options"], r["cnn"]) for r in out["cnns"]} == {
        (o, c) for o in ("project defaults", "released code", "configured") for c in ("visual_cnn", "audio_cnn")}
    main(["--conf-source", str(tmp_path), "--env", "big"])
    text = capsys.readouterr().out
    assert "transformer params" in text and "total" in text and "FLOPs per clip" in text


def test_project_conf_paper_env_is_the_paper_model(capsys):
    main(["--conf-source", str(CONF), "--env", "paper", "--json"])  # the repository's conf/
    out = json.loads(capsys.readouterr().out)
    assert out["components"]["transformers"] == 3_843_840
    # the paper's sizes (the dataclass defaults) with the CNN options of the authors' released code
    assert ModelConfig.from_dict(out["config"]) == with_cnn_options(ModelConfig(), RELEASED_CNN_OPTIONS)
    released = {r["cnn"]: r for r in out["cnns"] if r["options"] == "released code"}
    assert released["visual_cnn"]["flops_per_clip"] == 47_749_922_816  # 32 x 112 x 112, stem stride 2 in time
    assert released["audio_cnn"]["parameters"] == 5_841_888


def test_project_conf_base_is_small():
    cfg = project_model_config(CONF, "base")
    assert cfg.transformer.hidden < 768 and cfg.visual.width < 64
    assert meta_model(cfg).parameter_counts()["total"] < 5_000_000


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="fusion"):
        ModelConfig(fusion="middle")
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"transformer": {"hiden": 3}})
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig.from_dict({"transformer": {"hidden": 30, "n_heads": 4}})
    assert ModelConfig.from_dict({"visual": {"depths": [1, 1, 1, 1]}}).visual.depths == (1, 1, 1, 1)


@pytest.mark.parametrize("env", ["base", "paper"])
def test_project_model_config_is_what_a_kedro_run_reads(env):
    """project_model_config goes through Kedro's loader with the project's settings: an environment
    and runtime parameters soft-merge (one key changes, its siblings stay)."""
    from pemt_pipeline.project_config import project_parameters
    from pemt_pipeline.settings import CONFIG_LOADER_ARGS as KEDRO_ARGS

    from pemt_pipeline.project_config import CONFIG_LOADER_ARGS

    assert KEDRO_ARGS is CONFIG_LOADER_ARGS
    cfg = project_model_config(CONF, env)
    assert (cfg == with_cnn_options(ModelConfig(), RELEASED_CNN_OPTIONS)) == (env == "paper")
    params = project_parameters(CONF, env, {"model": {"transformer": {"hidden": 64}}})
    base = project_parameters(CONF, env)
    assert params["model"]["transformer"]["hidden"] == 64
    assert {k: v for k, v in params["model"]["transformer"].items() if k != "hidden"} == \
        {k: v for k, v in base["model"]["transformer"].items() if k != "hidden"}

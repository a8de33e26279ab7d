"""The importer of the authors' checkpoint against ../shared/fixtures/avbert_small: a checkpoint written
by the authors' own code, its inputs and the authors' outputs (float64 and float32)."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pemt_pipeline.models import ModelConfig, TrainedModel, load_trained, save_trained
from pemt_pipeline.models.authors import (CheckpointFormatError, check_authors_config, checkpoint_model_config,
                                          import_checkpoint, parse_checkpoint)
from pemt_pipeline.models.files import load_state
from tests.conftest import shared_fixture

# (CNN outputs, Transformer outputs): the authors' matrix exponential is a Pade approximation ~1e-11 from torch's
TOLERANCE = {torch.float64: (1e-12, 1e-9), torch.float32: (1e-4, 1e-4)}


@pytest.fixture(scope="module")
def fixture_dir():
    return shared_fixture("avbert_small")


@pytest.fixture(scope="module")
def raw(fixture_dir):
    return load_state(fixture_dir / "checkpoint.pyth", "authors' checkpoint")


@pytest.fixture(scope="module")
def authors_config(fixture_dir):
    return yaml.safe_load((fixture_dir / "config.yaml").read_text())


@pytest.fixture(scope="module")
def imported(raw, authors_config):
    ckpt = parse_checkpoint(raw, "avbert_small")
    cfg, origin = checkpoint_model_config(ckpt, ModelConfig(), authors_config)
    check_authors_config(cfg, authors_config, "avbert_small")
    return ckpt, cfg, origin


@pytest.fixture(scope="module")
def inputs(fixture_dir):
    return load_file(fixture_dir / "inputs.safetensors")


def _outputs(model, video, audio) -> dict[str, torch.Tensor]:
    """The fixture's named outputs computed by the project's model (eval mode, no grad)."""
    means: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, out):
            means[name] = out.flatten(2).mean(-1)  # [B*T, C]
        return hook

    for m, cnn in (("visual", model.visual_cnn), ("audio", model.audio_cnn)):
        cnn.stem.register_forward_hook(keep(f"{m}.cnn_stage1_mean"))
        for i, stage in enumerate(cnn.stages):
            stage.register_forward_hook(keep(f"{m}.cnn_stage{i + 2}_mean"))
    b, t = video.shape[:2]
    with torch.no_grad():
        v, a = model.embed_clips(video, audio[:, :, 0])
        out = {f"{k}": x.view(b, t, -1) for k, x in means.items()}
        streams = model.contextualize(v, a)
        out["visual.cnn_embedding"], out["audio.cnn_embedding"] = v, a
        for m, emb in (("visual", v), ("audio", a)):
            out[f"{m}.projected"] = model.projections[m](emb)
            out[f"{m}.tokens"] = model._tokens(m, emb, None)
            out[f"{m}.embedded"] = model.embeddings[m]([out[f"{m}.tokens"]])
            s = streams[m]
            out[f"{m}.output"] = torch.cat([s.summary[:, None], s.clips], 1)
        out["multimodal.embedded"] = model.embeddings["multimodal"]([out["visual.output"], out["audio.output"]])
        out["multimodal.output"] = torch.cat([torch.cat([streams[k].summary[:, None], streams[k].clips], 1)
                                              for k in ("multimodal_visual", "multimodal_audio")], 1)
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_imported_model_reproduces_the_authors_outputs(imported, inputs, dtype):
    ckpt, cfg, _ = imported
    model, _ = import_checkpoint(ckpt, cfg, dtype)
    ours = _outputs(model, inputs["input.visual"].to(dtype), inputs["input.audio"].to(dtype))
    prefix = "expected." if dtype == torch.float64 else "expected_f32."
    names = [k[len(prefix):] for k in inputs if k.startswith(prefix)]
    assert set(names) == set(ours), "every output of the fixture is compared"
    cnn_tol, transformer_tol = TOLERANCE[dtype]
    for name in names:
        expected = inputs[prefix + name].to(dtype)
        tol = cnn_tol if "cnn" in name else transformer_tol
        err = float((ours[name] - expected).abs().max())
        assert err <= tol, f"{name}: max |ours - authors'| = {err:.3g} > {tol:g} ({dtype})"


def test_configuration_comes_from_the_checkpoint_and_the_authors_config(imported):
    _, cfg, origin = imported
    sizes = (cfg.visual.width, cfg.audio.width, cfg.transformer.hidden, cfg.transformer.ffn, cfg.rank)
    assert sizes == (8, 8, 64, 128, 16)
    assert (cfg.transformer.n_layers, cfg.transformer.n_heads) == (2, 4)  # from config.yaml
    assert cfg.visual.stem_temporal_stride == 2 and cfg.audio.stem_kernel == 9
    assert cfg.audio.separable_inner_norm and cfg.audio.separable_stages == (True, True, False, False)
    assert cfg.max_clips == 9  # 10 position rows; the default max_clips (10) would need 11
    assert origin["n_layers, n_heads, dropout, audio strides"] == "the authors' config"


def test_every_stored_tensor_is_used_or_reported(imported, raw):
    ckpt, cfg, _ = imported
    _, report = import_checkpoint(ckpt, cfg)
    assert report["tensors"] == len(raw["state_dict"]) == 1055
    assert report["used"] + report["orthogonal_cache_checked"] + len(report["ignored"]) == report["tensors"]
    assert report["orthogonal_cache_checked"] == 18  # 6 linears x 3 groups (_B of the first copy)
    assert report["orthogonal_cache_max_abs_diff"] < 1e-5
    assert report["ignored"] == {}


def test_unknown_keys_are_ignored_and_reported(raw, imported):
    _, cfg, _ = imported
    state = dict(raw["state_dict"])
    state["avbert.pretrain_head.weight"] = torch.zeros(3, 4)
    state["module.avbert.visual_fc.bias"] = state.pop("avbert.visual_fc.bias")  # a DDP-wrapped save
    state["optimizer_step"] = torch.zeros(1)
    ckpt = parse_checkpoint({"state_dict": state, "epoch": 3, "optimizer": {}}, "extended")
    model, report = import_checkpoint(ckpt, cfg)
    assert report["ignored"] == {"avbert.pretrain_head.weight": [3, 4]}
    assert report["ignored_outside_prefix"] == ["optimizer_step"]
    assert report["ignored_top_level"] == ["optimizer"]
    assert torch.equal(model.projections["visual"][0].bias, raw["state_dict"]["avbert.visual_fc.bias"])


def test_a_wrong_shape_or_a_missing_key_names_the_key(raw, imported):
    _, cfg, _ = imported
    state = dict(raw["state_dict"])
    key = "avbert.audio_conv.s3.res1.branch2.b2.weight"
    state[key] = torch.zeros(16, 16, 1, 5)
    message = r"audio_conv\.s3\.res1\.branch2\.b2\.weight' has shape \[16, 16, 1, 5\]"
    with pytest.raises(CheckpointFormatError, match=message):
        import_checkpoint(parse_checkpoint({"state_dict": state}, "bad shape"), cfg)
    del state[key]
    with pytest.raises(CheckpointFormatError, match=r"has no 'avbert\.audio_conv\.s3\.res1\.branch2\.b2\.weight'"):
        import_checkpoint(parse_checkpoint({"state_dict": state}, "missing"), cfg)


def test_a_file_of_another_format_is_refused(tmp_path):
    with pytest.raises(CheckpointFormatError, match="not an authors' AVBERT checkpoint.*model file: use it directly"):
        parse_checkpoint({"model": {}, "model_config": {}}, "ours.pt")
    with pytest.raises(CheckpointFormatError, match="no 'avbert.' key"):
        parse_checkpoint({"state_dict": {"conv.weight": torch.zeros(1)}}, "other.pyth")
    with pytest.raises(CheckpointFormatError, match="found list"):
        parse_checkpoint([1, 2], "list.pt")


def test_an_authors_config_that_disagrees_with_the_checkpoint_is_refused(imported, authors_config):
    _, cfg, _ = imported
    wrong = {**authors_config, "TRANSFORMER": {**authors_config["TRANSFORMER"], "HIDDEN_SIZE": 768}}
    with pytest.raises(CheckpointFormatError, match="hidden: config 768, checkpoint 64"):
        check_authors_config(cfg, wrong, "avbert_small")


def test_the_written_model_file_loads_everywhere_with_the_same_outputs(imported, inputs, tmp_path):
    ckpt, cfg, _ = imported
    model, _ = import_checkpoint(ckpt, cfg)
    path = save_trained(TrainedModel(model), tmp_path / "imported.pt")
    loaded = load_trained(path).model
    assert loaded.cfg == cfg
    video, audio = inputs["input.visual"], inputs["input.audio"][:, :, 0]
    with torch.no_grad():
        a, b = model(video, audio), loaded(video, audio)
    assert torch.equal(a.multimodal_audio.clips, b.multimodal_audio.clips)
    assert float((a.visual_embeddings - inputs["expected_f32.visual.cnn_embedding"]).abs().max()) < 1e-4

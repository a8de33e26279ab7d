"""The exported plain model: outputs, file format, sharing, evaluation interface."""

import pytest
import torch

from pemt_pipeline.models import PEMTModel
from pemt_pipeline.pruning import GatedModel, export
from pemt_pipeline.models import PrunedModel, TrainedModel, load_model, save_trained
from pemt_pipeline.models import CPPHead, cpp_summary
from tests.pruning.conftest import (
    embeddings,
    mixed_architecture,
    randomize_gates,
    tiny_model,
    videos,
)


def _close(a, b):
    for x, y in zip(a.values(), b.values()):
        torch.testing.assert_close(x.summary, y.summary)
        torch.testing.assert_close(x.clips[x.mask], y.clips[y.mask])
        assert torch.equal(x.mask, y.mask)


@pytest.mark.parametrize("fusion,share_layers,sharing", [("mid", True, "lowrank"),
                                                         ("mid", False, "lowrank"),
                                                         ("early", True, "full"),
                                                         ("late", False, "none")])
def test_exported_model_equals_gated_model(fusion, share_layers, sharing, tmp_path):
    model = tiny_model(fusion=fusion, share_layers=share_layers, share_transformers=sharing)
    gated = GatedModel(model)
    randomize_gates(gated)
    arch = mixed_architecture(model.cfg)
    gated.set_architecture(arch)
    pruned = export(gated).eval()
    assert isinstance(pruned, PEMTModel) and pruned.architecture() == arch
    assert not any("gate" in n or "ffn_scores" in n or "parametrizations" in n
                   for n, _ in pruned.named_parameters())
    v, a, mask = embeddings(model)
    _close(pruned.contextualize(v, a, mask, mask), gated.contextualize(v, a, mask, mask))
    video, audio, clip_mask = videos(model)
    out, ref = pruned(video, audio, clip_mask), gated(video, audio, clip_mask)
    torch.testing.assert_close(out.visual_embeddings, ref.visual_embeddings)

    head = CPPHead(32).double()
    path = save_trained(TrainedModel(pruned, head), tmp_path / "pruned.pt")
    state = torch.load(path, weights_only=True)  # tensors and plain Python values only
    assert state["architecture"] == arch and "cpp_head" in state
    loaded = load_model(path).double()  # load_state_dict keeps the fresh model's float32
    _close(loaded.contextualize(v, a, mask, mask), pruned.contextualize(v, a, mask, mask))
    streams = loaded.contextualize(v, a, mask, mask)
    assert head(cpp_summary(streams)).shape == (2,)


def test_export_keeps_sharing_and_drops_unused_weights():
    model = tiny_model(share_layers=True, share_transformers="lowrank")
    gated = GatedModel(model)
    arch = {name: [{"op": "skip", "ffn_units": 8}, {"op": "conv1", "ffn_units": 32}]
            for name in model.cfg.transformer_names}
    gated.set_architecture(arch)
    pruned = export(gated)
    layers = {n: list(t.layers) for n, t in pruned.transformers.items()}
    # fc1 / fc2 (and o's shared U) stay one module across depths and streams
    assert layers["visual"][0].ffn.fc1 is layers["visual"][1].ffn.fc1
    assert layers["visual"][1].mixer.u is layers["audio"][1].mixer.u
    names = [n for n, _ in pruned.transformers.named_parameters()]
    assert not any(".q." in n or ".k." in n for n in names)  # no attention left anywhere
    counts, before = pruned.parameter_counts(), model.parameter_counts()
    assert counts["visual_cnn"] == before["visual_cnn"]
    assert counts["transformers"] < before["transformers"]
    # the export copies: training it leaves the gated model's weights alone
    with torch.no_grad():
        layers["visual"][0].ffn.fc1.u.weight.add_(1.0)
    assert not torch.equal(layers["visual"][0].ffn.fc1.u.weight,
                           gated.gated_layers()["visual"][0].layer.fc1.u.weight)
    # a fresh PrunedModel of the same configuration takes the state dict as it is
    fresh = PrunedModel(pruned.pruned_cfg)
    fresh.load_state_dict(pruned.state_dict())

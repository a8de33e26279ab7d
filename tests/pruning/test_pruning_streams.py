"""StreamModel takes its base model's parts by name (PEMTModel.PARTS); plain Sigmas come from a
fresh model (torch's remove_parametrizations), never by stripping a shared class."""

import copy

import pytest
import torch
from torch.nn.utils import parametrize

from pemt_pipeline.models import PEMTModel
from pemt_pipeline.models.streams import StreamModel, plain_copy, plain_sigmas
from pemt_pipeline.pruning import GatedModel, export
from tests.pruning.conftest import embeddings, mixed_architecture, tiny_model

CONFIGS = [("mid", True, "lowrank"), ("early", False, "full"), ("late", False, "none")]


def _parametrised(model) -> int:
    return sum(parametrize.is_parametrized(m) for m in model.modules())


@pytest.mark.parametrize("fusion,share_layers,sharing", CONFIGS)
def test_parts_cover_every_child_but_the_transformers(fusion, share_layers, sharing):
    model = tiny_model(fusion=fusion, share_layers=share_layers, share_transformers=sharing)
    own = [n for n, _ in model.named_children()] + list(model._parameters) + list(model._buffers)
    assert [n for n in own if n != "transformers"] == list(PEMTModel.PARTS)  # all of them, in order
    assert "transformers" in own

    stream = StreamModel(model, dict(model.transformers.items()))
    for name in PEMTModel.PARTS:
        assert getattr(stream, name) is getattr(model, name)  # taken by reference
    assert stream.cfg is model.cfg and stream.training == model.training
    assert list(stream.state_dict()) == [k for k in model.state_dict() if not k.startswith("transformers.")] + [
        k for k in model.state_dict() if k.startswith("transformers.")]
    assert {id(p) for p in stream.parameters()} == {id(p) for p in model.parameters()}


def test_plain_copy_is_the_same_model_and_leaves_the_original_parametrised():
    model = tiny_model(share_transformers="lowrank")
    twin = copy.deepcopy(model)  # shares torch's injected classes with `model`
    n = _parametrised(model)
    assert n > 0
    v, a, mask = embeddings(model)
    ref = model.contextualize(v, a, mask, mask)
    plain = plain_copy(twin)
    assert _parametrised(plain) == 0 and _parametrised(twin) == n and _parametrised(model) == n
    assert next(plain.parameters()).dtype == torch.float64 and not plain.training
    out, again = plain.contextualize(v, a, mask, mask), model.contextualize(v, a, mask, mask)
    for k in ref:  # the same numbers: Sigma's value is what the parametrisation computes
        assert torch.equal(out[k].summary, ref[k].summary) and torch.equal(out[k].clips, ref[k].clips)
        assert torch.equal(again[k].clips, ref[k].clips)


def test_plain_sigmas_removes_the_parametrisations_of_a_fresh_model_in_place():
    model = tiny_model(share_transformers="lowrank")
    sigma = model.transformers["visual"].layers[0].q.sigma
    value = sigma.weight.detach().clone()
    assert plain_sigmas(model) is model and _parametrised(model) == 0
    assert type(sigma) is torch.nn.Linear and isinstance(sigma.weight, torch.nn.Parameter)
    assert torch.equal(sigma.weight, value) and sigma.weight.requires_grad


def test_export_leaves_the_gated_model_and_its_deep_copies_working():
    model = tiny_model(share_layers=False, share_transformers="lowrank")
    gated = GatedModel(model)
    gated.set_architecture(mixed_architecture(model.cfg))
    twin = copy.deepcopy(gated)
    n = _parametrised(gated)
    v, a, mask = embeddings(model)
    ref = gated.contextualize(v, a, mask, mask)
    pruned = export(twin).eval()
    assert _parametrised(pruned) == 0 and _parametrised(twin) == n and _parametrised(gated) == n
    out = gated.contextualize(v, a, mask, mask)
    for k in ref:
        assert torch.equal(out[k].summary, ref[k].summary)
    assert all(torch.equal(p, q) for p, q in zip(export(gated).state_dict().values(), pruned.state_dict().values()))

"""The pruning run's library around the search: its configuration (the YAML's values are the
defaults), the latency timing, the parameter count, the frozen clip encoders, the results."""

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from pemt_pipeline.devices import torch_threads
from pemt_pipeline.models import full_architecture
from pemt_pipeline.pruning import (
    FinetuneConfig,
    GatedModel,
    LatencyConfig,
    PruningConfig,
    SearchConfig,
    collect_results,
    contextualize_latency,
    export,
    frozen_clip_encoders,
    partition_name,
    transformer_parameters,
)
from tests.pruning.conftest import embeddings, tiny_model

CONF = Path(__file__).resolve().parents[2] / "conf" / "base"


def test_the_yaml_sets_every_field_to_its_default():
    params = yaml.safe_load((CONF / "parameters_pruning.yml").read_text())["pruning"]
    assert PruningConfig.from_dict(params) == PruningConfig()
    fields = lambda cls: set(cls.__dataclass_fields__)  # noqa: E731
    assert set(params) == fields(PruningConfig)
    assert set(params["search"]) == fields(SearchConfig) - {"flops_target"}  # targets set it
    assert set(params["finetune"]) == fields(FinetuneConfig)
    assert set(params["latency"]) == fields(LatencyConfig)


def test_config_is_typed_and_checked_once():
    cfg = PruningConfig.from_dict({"targets": [0.6, 0.3], "search": {"steps": 3}, "latency": {"repeats": 2}})
    assert cfg.targets == (0.6, 0.3) and isinstance(cfg.search, SearchConfig) and cfg.search.steps == 3
    assert cfg.search_config(0.3) == SearchConfig(steps=3, flops_target=0.3)
    assert cfg.latency == LatencyConfig(repeats=2) and partition_name(0.3) == "target_0.3"
    with pytest.raises(ValueError, match="pruning.targets"):
        PruningConfig.from_dict({"search": {"flops_target": 0.5}})
    with pytest.raises(ValueError, match="pruning.search"):
        PruningConfig.from_dict({"search": {"stepz": 3}})
    with pytest.raises(ValueError, match="pruning.latency.repeats"):
        PruningConfig.from_dict({"latency": {"repeats": 0}})


class SleepyModel:
    """contextualize takes `seconds`; records the calls and torch's threads during them."""

    def __init__(self, seconds: float):
        self.seconds, self.calls, self.threads = seconds, 0, set()

    def eval(self):
        return self

    def to(self, device):
        return self

    def contextualize(self, v, a, visual_mask, audio_mask):
        assert v.shape[0] == 2 and torch.is_inference_mode_enabled()
        self.calls += 1
        self.threads.add(torch.get_num_threads())
        time.sleep(self.seconds)


def test_latency_is_the_median_of_timed_passes_on_the_current_threads():
    features = SimpleNamespace(visual=torch.zeros(5, 4, 3), audio=torch.zeros(5, 4, 3),
                               mask=torch.ones(5, 4, dtype=torch.bool))
    model = SleepyModel(0.01)
    with torch_threads(2):
        ms = contextualize_latency(model, features, LatencyConfig(batch_size=2, warmup=2, repeats=5),
                                   torch.device("cpu"))
    # warmup passes, then per timed pass the Timer's 2 untimed ones and the timed one
    assert model.calls == 2 + 5 * 3 and model.threads == {2}
    assert isinstance(ms, float) and 10 <= ms < 100


def test_latency_of_a_model():
    model = tiny_model()
    v, a, mask = embeddings(model)
    features = SimpleNamespace(visual=v, audio=a, mask=mask)
    ms = contextualize_latency(model, features, LatencyConfig(warmup=0, repeats=2), torch.device("cpu"))
    assert ms > 0


def test_parameters_of_unpruned_full_and_empty_architectures():
    model = tiny_model(share_layers=False, share_transformers="lowrank")
    full = model.parameter_counts()["transformers"]
    assert transformer_parameters(model) == full
    gated = GatedModel(model)
    gated.set_architecture(full_architecture(model.cfg))
    assert transformer_parameters(export(gated)) == full  # everything used
    dense = tiny_model(share_layers=False, share_transformers="none")
    gated = GatedModel(dense)
    gated.set_architecture({name: [{"op": "skip", "ffn_units": 0}] * 2 for name in dense.cfg.transformer_names})
    pruned = export(gated)
    used = {id(p): p for stack in pruned.transformers.values() for layer in stack.layers
            for p in [*layer.norm1.parameters(), *layer.norm2.parameters(), layer.ffn.fc2.bias]}
    assert transformer_parameters(pruned) == sum(p.numel() for p in used.values())  # LayerNorms, fc2's bias


def test_frozen_clip_encoders_are_restored():
    model = tiny_model()
    cnns = model.visual_cnn, model.audio_cnn
    with pytest.raises(RuntimeError), frozen_clip_encoders(model):
        assert isinstance(model.visual_cnn, torch.nn.Flatten)
        raise RuntimeError
    assert (model.visual_cnn, model.audio_cnn) == cnns


def test_results_take_every_target_and_name_a_missing_one():
    cfg = PruningConfig(targets=(0.5,), search=SearchConfig(steps=3), finetune=FinetuneConfig(steps=2))
    base = {"flops": 100, "parameters": 10, "latency_ms": 1.0, "latency_device": "cpu", "probe": {},
            "retrieval": {}, "architecture": {}, "ffn_full": 8}
    pruned = {"target_0.5": {**base, "flops": 50}}
    logs = {"target_0.5": {"search_history": [{"step": 0}]}}
    results = collect_results(base, pruned, logs, cfg, "data/06_models/checkpoints/last.pt")
    assert results["config"] == {"targets": [0.5], "search_steps": 3, "finetune_steps": 2,
                                 "model_file": "data/06_models/checkpoints/last.pt"}
    assert results["targets"][0]["flops_ratio"] == 0.5 and "architecture" not in results["base"]
    with pytest.raises(KeyError, match="target_0.5"):
        collect_results(base, {}, logs, cfg)

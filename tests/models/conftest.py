"""Tiny model configurations and inputs shared by the model tests."""

import dataclasses

import pytest
import torch

from pemt_pipeline.models import (
    AudioCNNConfig,
    ModelConfig,
    PEMTModel,
    TransformerConfig,
    VisualCNNConfig,
)

# clips: 4 frames of 32 x 32, log-mel 16 x 16; batches of 2 videos x 4 clips (= max_clips)
FRAMES, CROP, MELS, MEL_FRAMES = 4, 32, 16, 16
MAX_CLIPS = 4



def tiny_config(**overrides) -> ModelConfig:
    cfg = ModelConfig(
        visual=VisualCNNConfig(width=4, depths=(1, 1, 1, 1)),
        audio=AudioCNNConfig(width=4, depths=(1, 1, 1, 1)),
        transformer=TransformerConfig(hidden=32, n_layers=3, n_heads=4, ffn=64),
        rank=8, max_clips=MAX_CLIPS)
    return dataclasses.replace(cfg, **overrides)


def tiny_model(seed: int = 0, **overrides) -> PEMTModel:
    torch.manual_seed(seed)
    return PEMTModel(tiny_config(**overrides))


def tiny_inputs(seed: int = 1, batch: int = 2, clips: int = MAX_CLIPS):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, clips, 3, FRAMES, CROP, CROP, generator=g)
    audio = torch.randn(batch, clips, MELS, MEL_FRAMES, generator=g)
    return video, audio


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def make_inputs():
    return tiny_inputs


@pytest.fixture
def make_config():
    return tiny_config

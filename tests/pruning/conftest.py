"""Tiny models, clip embeddings with padding, and a small demo set for the pruning tests."""

from __future__ import annotations

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

T = 4  # clips per video (= max_clips)


def tiny_config(**overrides) -> ModelConfig:
    cfg = ModelConfig(visual=VisualCNNConfig(width=4, depths=(1, 1, 1, 1)),
                      audio=AudioCNNConfig(width=4, depths=(1, 1, 1, 1)),
                      transformer=TransformerConfig(hidden=16, n_layers=2, n_heads=4, ffn=32,
                                                    dropout=0.0, attention_dropout=0.0),
                      rank=4, max_clips=T)
    return dataclasses.replace(cfg, **overrides)


def tiny_model(seed: int = 0, dtype=torch.float64, **overrides) -> PEMTModel:
    torch.manual_seed(seed)
    return PEMTModel(tiny_config(**overrides)).to(dtype).eval()


def embeddings(model: PEMTModel, clips: int = T, seed: int = 1):
    """Clip embeddings (visual [2, clips, Dv], audio [2, clips, Da]) and a clip mask whose first
    video has one padded clip."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    v = torch.randn(2, clips, model.visual_cnn.out_dim, generator=g).to(dtype)
    a = torch.randn(2, clips, model.audio_cnn.out_dim, generator=g).to(dtype)
    mask = torch.ones(2, clips, dtype=torch.bool)
    mask[0, -1] = False
    return v, a, mask


def videos(model: PEMTModel, clips: int = T, seed: int = 2):
    """Raw inputs of `forward`: video [2, clips, 3, 4, 28, 28], audio [2, clips, 16, 8], mask."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    video = torch.randn(2, clips, 3, 4, 28, 28, generator=g).to(dtype)
    audio = torch.randn(2, clips, 16, 8, generator=g).to(dtype)
    mask = torch.ones(2, clips, dtype=torch.bool)
    mask[1, -1] = False
    return video, audio, mask


def mixed_architecture(cfg: ModelConfig) -> dict:
    """Every op and several FFN widths (0 and all included) across the Transformers."""
    ops = ["conv3", "skip", "attention", "conv1", "conv3", "conv1"]
    units = [5, cfg.transformer.ffn, 0, 11, 1, 20]
    arch, i = {}, 0
    for name in cfg.transformer_names:
        arch[name] = []
        for _ in range(cfg.transformer.n_layers):
            arch[name].append({"op": ops[i % 6], "ffn_units": units[i % 6]})
            i += 1
    return arch


def randomize_gates(gated, seed: int = 3) -> None:
    """Random head-mixing logits and FFN-unit scores (so kernels and kept units are non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layers in gated.gated_layers().values():
            for layer in layers:
                for p in (layer.head_logits, layer.ffn_scores):
                    p.copy_(torch.randn(p.shape, generator=g))


@pytest.fixture(scope="session")
def demo_batches(tmp_path_factory):
    """Two training batches (4 videos each, 4 clips of 4 frames at 28 px) of the demo dataset,
    built by the ingestion library and read by the training dataset as training.loop does."""
    from pemt_pipeline.media.folder import VideoSource, build_index
    from pemt_pipeline.media.ingest import IngestConfig, ingest_all
    from pemt_pipeline.media.synthetic import DemoConfig, generate_demo_dataset
    from pemt_pipeline.features.dataset import AugmentConfig, ShardClipDataset, collate, model_batch

    root = tmp_path_factory.mktemp("pruning_demo")
    files, _ = generate_demo_dataset(DemoConfig(n_videos=8, min_duration_s=3, max_duration_s=4,
                                                width=64, height=48, test_fraction=0.0))
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    cfg = IngestConfig(fps=8, frames_per_clip=4, frame_stride=1, clips_per_video=T,
                       short_side=32, n_mels=16, mel_frames=8, shard_dir=str(root / "shards"),
                       workers=1, progress=False)
    manifest, rejects, _ = ingest_all(build_index(VideoSource(root)), cfg)
    assert rejects.empty and len(manifest) == 8
    augment = AugmentConfig(crop=28, short_side_range=(28, 32))
    dataset = ShardClipDataset(manifest, augment, train=True)
    return [model_batch(collate([dataset[i] for i in range(j, j + 4)]), "cpu", augment) for j in (0, 4)]

"""The CNN options of the authors' released code: each changes what it should (shapes, parameters, FLOPs)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from pemt_pipeline.models import AudioCNNConfig, ModelConfig, VisualCNNConfig
from pemt_pipeline.models.cnn import audio_resnet, visual_resnet
from pemt_pipeline.models.param_table import cnn_costs

VISUAL = VisualCNNConfig(width=4, depths=(1, 1, 1, 1))
AUDIO = AudioCNNConfig(width=4, depths=(1, 1, 1, 1))
SIZES = {"frames": 8, "crop": 32, "n_mels": 16, "mel_frames": 16}


def _costs(visual=VISUAL, audio=AUDIO):
    return cnn_costs(ModelConfig(visual=visual, audio=audio), **SIZES)


def _stage_shapes(cnn: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes = []
    for stage in cnn.stages:
        stage.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        cnn.eval()(x)
    return shapes


def test_visual_stem_temporal_stride_halves_the_frames_of_every_stage():
    x = torch.randn(1, 3, 8, 32, 32)
    plain = _stage_shapes(visual_resnet(VISUAL), x)
    strided = _stage_shapes(visual_resnet(dataclasses.replace(VISUAL, stem_temporal_stride=2)), x)
    assert [s[2] for s in plain] == [8] * 4 and [s[2] for s in strided] == [4] * 4
    assert [s[3:] for s in plain] == [s[3:] for s in strided]  # space untouched
    before = _costs()["visual_cnn"]
    after = _costs(visual=dataclasses.replace(VISUAL, stem_temporal_stride=2))["visual_cnn"]
    assert before["parameters"] == after["parameters"]
    # every conv runs on half the frames
    assert after["flops_per_clip"] == pytest.approx(before["flops_per_clip"] / 2, rel=1e-9)


def test_audio_stem_kernel_sets_the_stem_shapes():
    cnn = audio_resnet(dataclasses.replace(AUDIO, stem_kernel=9))
    convs = [m for m in cnn.stem.modules() if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(4, 1, 9, 1), (4, 4, 1, 9)]
    assert [c.padding for c in convs] == [(4, 0), (0, 4)]  # same size out


def test_separable_inner_norm_adds_batchnorm_and_relu_between_the_halves():
    def norms(cnn):
        return sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())

    plain, inner = audio_resnet(AUDIO), audio_resnet(dataclasses.replace(AUDIO, separable_inner_norm=True))
    assert norms(inner) - norms(plain) == 1 + 4  # the stem and one separable conv per block
    first = inner.stem[0]
    assert isinstance(first[1], nn.BatchNorm2d) and isinstance(first[2], nn.ReLU)
    widths = [4] + [4 * 2**i for i in range(4)]  # stem, then each block's inner width
    extra = _costs(audio=dataclasses.replace(AUDIO, separable_inner_norm=True))["audio_cnn"]["parameters"]
    assert extra - _costs()["audio_cnn"]["parameters"] == sum(2 * c for c in widths)  # BN weight + bias


def test_separable_stages_chooses_plain_3x3_per_stage():
    cfg = dataclasses.replace(AUDIO, separable_stages=(True, True, False, False))
    cnn = audio_resnet(cfg)
    middles = [stage[0].branch[1] for stage in cnn.stages]
    kernels = [[tuple(m.weight.shape[2:]) for m in mid.modules() if isinstance(m, nn.Conv2d)] for mid in middles]
    assert kernels == [[(3, 1), (1, 3)], [(3, 1), (1, 3)], [(3, 3)], [(3, 3)]]
    x = torch.randn(1, 1, 16, 16)
    assert _stage_shapes(cnn, x) == _stage_shapes(audio_resnet(AUDIO), x)  # same strides, same shapes
    # a plain 3x3 has 9 C^2 weights where the separable pair has 6 C^2
    c3, c4 = 16, 32
    diff = _costs(audio=cfg)["audio_cnn"]["parameters"] - _costs()["audio_cnn"]["parameters"]
    assert diff == 3 * (c3 * c3 + c4 * c4)  # inner widths of res4, res5; one BatchNorm after either


@pytest.mark.parametrize("key, value, message", [
    ("separable_stages", (True, False), "a list of 4 true/false values"),
    ("separable_inner_norm", "yes", "true or false"),
])
def test_bad_options_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=rf"model\.audio\.{key}.*{message}"):
        dataclasses.replace(AUDIO, **{key: value}).validate()
    with pytest.raises(ValueError, match=r"model\.visual\.stem_temporal_stride"):
        dataclasses.replace(VISUAL, stem_temporal_stride=0).validate()

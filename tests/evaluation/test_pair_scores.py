"""CPP pair scores: entry [i, j] is the head's logit for video i's frames with video j's audio."""

import torch

from pemt_pipeline.evaluation.features import VideoFeatures, pair_scores
from pemt_pipeline.models import ModelConfig, PEMTModel
from pemt_pipeline.models import CPPHead, cpp_summary
from tests.training.conftest import TINY_MODEL


def test_pair_scores_match_one_pair_at_a_time():
    torch.manual_seed(0)
    for fusion in ("early", "mid", "late"):
        model = PEMTModel(ModelConfig.from_dict({**TINY_MODEL, "fusion": fusion})).eval()
        head = CPPHead(2 * model.cfg.transformer.hidden).eval()
        n, t = 5, 4
        mask = torch.ones(n, t, dtype=torch.bool)
        mask[1, 3:] = False  # a video with fewer clips
        feats = VideoFeatures({}, torch.randn(n, t, model.visual_cnn.out_dim),
                              torch.randn(n, t, model.audio_cnn.out_dim), mask)
        scores = pair_scores(model, head, feats, device="cpu")
        with torch.no_grad():
            for i, j in ((0, 0), (0, 3), (1, 2), (4, 1)):
                streams = model.contextualize(feats.visual[i:i + 1], feats.audio[j:j + 1], mask[i:i + 1], mask[j:j + 1])
                expected = head(cpp_summary(streams))[0]
                assert torch.allclose(torch.tensor(scores[i, j]), expected, atol=1e-5), (fusion, i, j)

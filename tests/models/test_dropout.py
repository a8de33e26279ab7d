"""models.Dropout: nn.Dropout's distribution and gradient with its own CPU mask."""

import pytest
import torch
import torch.nn as nn

from pemt_pipeline.models.dropout import Dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_one_minus_p_scaled(p):
    torch.manual_seed(0)
    x = torch.full((1000, 1000), 2.0, requires_grad=True)
    y = Dropout(p).train()(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / x.numel()) ** 0.5  # 5 sigma
    assert torch.allclose(y[kept], torch.tensor(2.0 / (1 - p)))
    y.sum().backward()
    assert torch.equal(x.grad, kept * torch.tensor(1.0 / (1 - p)))  # the mask's, scaled
    cols = kept.float().mean(0)  # no structure along either axis (a broken mask repeats)
    assert cols.std().item() < 3 * (p * (1 - p) / 1000) ** 0.5


def test_dropout_is_nn_dropout_outside_cpu_training():
    x = torch.randn(4, 8)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), nn.Dropout(1.0).train()(x))
    assert isinstance(Dropout(0.1), nn.Dropout) and Dropout(0.1).state_dict() == {}


def test_dropout_follows_the_global_seed():
    x = torch.randn(64, 64)
    torch.manual_seed(3)
    a = Dropout(0.2).train()(x)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.2).train()(x), a)

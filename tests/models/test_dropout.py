"""models.Dropout: nn.Dropout's values, with a bool mask saved for backward."""

import pytest
import torch
import torch.nn as nn

from pemt_pipeline.models.dropout import Dropout


def _saved_dtypes(fn) -> list[torch.dtype]:
    dtypes = []

    def pack(t):
        dtypes.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return dtypes


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_equals_nn_dropout_for_a_seed_and_saves_a_bool_mask(p):
    x = torch.randn(300, 200, requires_grad=True)
    g = torch.randn(300, 200)
    torch.manual_seed(3)
    ref = nn.Dropout(p).train()(x)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    torch.manual_seed(3)
    out = Dropout(p).train()(x)
    (grad,) = torch.autograd.grad(out, x, g)
    assert torch.equal(out, ref) and torch.equal(grad, ref_grad)
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / x.numel()) ** 0.5
    assert torch.allclose(grad, g * kept / (1 - p))
    assert _saved_dtypes(lambda: Dropout(p).train()(x)) == [torch.bool]
    assert torch.float32 in _saved_dtypes(lambda: nn.Dropout(p).train()(x))  # what this saves on CPU


def test_dropout_is_nn_dropout_outside_training():
    x = torch.randn(4, 8)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), nn.Dropout(1.0).train()(x))
    assert isinstance(Dropout(0.1), nn.Dropout) and Dropout(0.1).state_dict() == {}

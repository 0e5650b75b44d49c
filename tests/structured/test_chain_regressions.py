"""Regressions of issue 13: length-1 chains with per-position transitions, dtype casts."""

import pytest
import torch

from pyrocg.layers.crf import ChainCRF
from pyrocg.structured import LinearChainCRF


@pytest.mark.parametrize("per_position", [False, True])
def test_length_one_chain_is_a_softmax(per_position):
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(3, 1, 4, dtype=torch.float64, generator=g)
    start = torch.randn(4, dtype=torch.float64, generator=g)
    end = torch.randn(4, dtype=torch.float64, generator=g)
    trans = torch.randn(3, 0, 4, 4, dtype=torch.float64) if per_position else torch.randn(4, 4)
    crf = LinearChainCRF(unary, trans.double(), start=start, end=end)
    logits = unary[:, 0] + start + end
    assert torch.allclose(crf.log_partition, logits.logsumexp(-1))
    assert torch.allclose(crf.marginals[:, 0], logits.softmax(-1))
    assert torch.equal(crf.argmax[:, 0], logits.argmax(-1))
    p = logits.softmax(-1)
    assert torch.allclose(crf.entropy(), -(p * p.log()).sum(-1))
    tags = crf.sample((5,))
    assert tags.shape == (5, 3, 1)
    assert torch.allclose(crf.log_prob(tags), logits.log_softmax(-1).gather(-1, tags[..., 0].T).T)


def test_chain_crf_layer_casts_start_and_end():
    layer = ChainCRF(3)
    unary = torch.randn(2, 4, 3, dtype=torch.float64)
    dist = layer(unary)
    assert dist.log_partition.dtype == torch.float64
    ref = LinearChainCRF(unary, layer.transitions.double(), start=layer.start.double(),
                         end=layer.end.double())
    assert torch.allclose(dist.log_partition, ref.log_partition)

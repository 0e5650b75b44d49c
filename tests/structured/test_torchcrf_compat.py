"""Agreement with pytorch-crf (``torchcrf``), skipped when it is not installed."""

import pytest
import torch

from pyrocg.structured import LinearChainCRF

torchcrf = pytest.importorskip("torchcrf")


@pytest.mark.parametrize("start_end", [False, True])
def test_matches_pytorch_crf(start_end):
    torch.manual_seed(0)
    batch, length, tags = 5, 7, 4
    ref = torchcrf.CRF(tags, batch_first=True)
    if not start_end:  # torchcrf always has start/end potentials: zero them
        with torch.no_grad():
            ref.start_transitions.zero_()
            ref.end_transitions.zero_()
    unary = torch.randn(batch, length, tags)
    lengths = torch.tensor([7, 3, 1, 6, 7])
    mask = torch.arange(length) < lengths[:, None]
    tags_ = torch.randint(0, tags, (batch, length))
    kw = {"start": ref.start_transitions, "end": ref.end_transitions} if start_end else {}
    crf = LinearChainCRF(unary, ref.transitions, lengths, **kw)
    want = ref(unary, tags_, mask, reduction="none")
    assert torch.allclose(crf.log_prob(tags_), want, atol=1e-5)
    decoded = ref.decode(unary, mask)
    for b, path in enumerate(decoded):
        assert crf.argmax[b, : lengths[b]].tolist() == path

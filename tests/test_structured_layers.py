"""CRF output layers and likelihoods inside the chain-graph model, against direct formulas."""

import pytest
import torch
import torch.nn.functional as F

from pyrocg import handlers, infer, layers, models, structured, tasks


def seq_data(b=6, n=5, d=4, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)
    y = torch.randint(0, c, (b, n), generator=g)
    y[0, 3:] = -1  # a ragged sequence
    return x, y


def test_chain_crf_likelihood_matches_linear_chain_crf():
    x, y = seq_data()
    net = models.mlp(4, [8], 3)
    crf = layers.ChainCRF(3)
    with torch.no_grad():
        crf.transitions.normal_()
    lik = infer.ChainCRFLikelihood(crf, dataset_size=6, token_dims=1)
    model = infer.CGModel(net, lik)
    with handlers.feedforward():
        unary = net(x)
    lengths = (y >= 0).sum(-1)
    ref = structured.LinearChainCRF(unary, crf.transitions, lengths, start=crf.start, end=crf.end)
    expected = -ref.log_prob(y.clamp_min(0)).mean()
    assert torch.allclose(model.loss(x, y), expected, atol=1e-5)
    pred = infer.predict(model, x, y)
    assert torch.allclose(pred.pointwise_log_lik, ref.log_prob(y.clamp_min(0)), atol=1e-5)
    # Marginals are predicted without targets, hence over full-length sequences.
    full = structured.LinearChainCRF(unary, crf.transitions, start=crf.start, end=crf.end)
    assert torch.allclose(pred.mean, full.marginals, atol=1e-5)


def test_frozen_zero_transitions_are_independent_softmaxes():
    x, y = seq_data()
    y[0, 3:] = 0
    net = models.mlp(4, [8], 3)
    crf = layers.ChainCRF(3, start_end=False)
    lik = infer.ChainCRFLikelihood(crf, dataset_size=6, token_dims=1)
    model = infer.CGModel(net, lik)
    with handlers.feedforward():
        logp = torch.log_softmax(net(x), -1)
    expected = -logp.gather(-1, y[..., None]).sum((-2, -1)).mean()
    assert torch.allclose(model.loss(x, y), expected, atol=1e-5)


def test_multilabel_zero_iterations_is_binary_cross_entropy():
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8, 3))
    net = models.mlp(5, [6], 3)
    lik = infer.MultiLabelCRFLikelihood(structured.MultiLabelMeanFieldCRF(3, num_iters=0), 8)
    model = infer.CGModel(net, lik)
    with handlers.feedforward():
        logits = net(x)
    bce = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").sum(-1).mean()
    assert torch.allclose(model.loss(x, y), bce, atol=1e-4)


def test_grid_likelihood_runs_in_every_mode_and_learns_coupling():
    data = tasks.digit_strokes(n_train=40, n_val=8, n_test=8)
    for mode in (infer.FeedForward(), infer.PCFF(0.3), infer.MCDropout()):
        # Dropout nodes over the feature maps only where the mode uses them.
        drop = [layers.Dropout(0.2, unit_dims=3)] if mode.uses_dropout else []
        net = layers.Sequential(layers.Conv2d(1, 4, 3, padding=1), *drop,
                                layers.Conv2d(4, 2, 1, node=None))
        lik = infer.GridCRFLikelihood(structured.GridMeanFieldCRF(2, num_iters=3), len(data.train))
        model = infer.CGModel(net, lik, mode)
        before = lik.crf.potts_weight.item()
        infer.fit(model, data, infer.TrainConfig(epochs=2, batch_size=8, lr=0.05, eval_samples=2,
                                                 progress=False))
        assert lik.crf.potts_weight.item() != before
        res = infer.evaluate(model, data.test.x, data.test.y, num_samples=2)
        assert 0.0 <= res["pixel_accuracy"] <= 1.0


def test_tasks_have_unseen_test_images_and_markov_labels():
    d = tasks.digit_sequences(n_train=200, n_val=10, n_test=50, noise=0.0, p_next=1.0)
    y = d.train.y
    assert torch.equal(y[:, 1:], (y[:, :-1] + 1) % 10)
    # Clean test images never occur among the training images.
    tr = d.train.x.reshape(-1, 64)
    te = d.test.x.reshape(-1, 64)
    assert not (torch.cdist(te[:100], tr).min(-1).values == 0).any()


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda lik, out: lik(out, torch.full((2, 4), 3)), ValueError, r"in \[0, 3\)"),
        (lambda lik, out: lik(out, torch.tensor([[0, -1, 1, 1], [0, 1, 1, 1]])), ValueError,
         "only appear at the end"),
        (lambda lik, out: lik(out, torch.zeros(2, 5, dtype=torch.long)), ValueError, "shape"),
        (lambda lik, out: lik(out, torch.zeros(2, 4)), TypeError, "int64"),
    ],
)
def test_chain_likelihood_bad_targets(call, exc, match):
    lik = infer.ChainCRFLikelihood(layers.ChainCRF(3), 2)
    with pytest.raises(exc, match=match):
        call(lik, torch.randn(2, 4, 3))


def test_bad_crf_arguments():
    with pytest.raises(ValueError, match="num_tags"):
        layers.ChainCRF(1)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., length, 3\)"):
        layers.ChainCRF(3)(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="token_dims"):
        infer.ChainCRFLikelihood(layers.ChainCRF(3), 2, token_dims=0)
    with pytest.raises(ValueError, match="n_train"):
        tasks.digit_sequences(n_train=0)

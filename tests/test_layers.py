"""Feed-forward mode equals the plain PyTorch network with the same weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyrocg import handlers, layers, models
from pyrocg.reference import PlainResNet20, copy_weights


def check_same(ours: nn.Module, plain: nn.Module, x: torch.Tensor, atol=1e-5) -> None:
    copy_weights(ours, plain)
    with handlers.feedforward():
        out = ours(x)
    ref = plain(x)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=atol, rtol=1e-5)
    w = torch.randn_like(ref)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for (name, p), q in zip(ours.named_parameters(), plain.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=atol, rtol=1e-4), name


ACTS = {
    "relu": nn.ReLU(),
    "softplus": nn.Softplus(),
    "binary": nn.Sigmoid(),
    "sign": nn.Tanh(),
    "leaky_relu": nn.LeakyReLU(0.01),
    "gaussian": nn.Identity(),
}


@pytest.mark.parametrize("node", list(ACTS))
def test_mlp_feedforward_equals_plain(node, device):
    torch.manual_seed(0)
    ours = models.mlp(20, [32, 16], 5, node=node).to(device)
    plain = nn.Sequential(
        nn.Linear(20, 32), ACTS[node], nn.Linear(32, 16), ACTS[node], nn.Linear(16, 5)
    ).to(device)
    check_same(ours, plain, torch.randn(8, 20, device=device))


def test_mlp_with_dropout_and_batchnorm_equals_plain_in_eval_and_train(device):
    ours = models.mlp(10, [12, 12], 3, dropout=0.3, norm="batch").to(device)
    plain = nn.Sequential(
        nn.Linear(10, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(12, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 3),
    ).to(device)
    # Train mode: batch statistics (and running-average updates) identical; the
    # feed-forward mode marginalises dropout, i.e. eval-mode dropout.
    x = torch.randn(16, 10, device=device)
    plain.apply(lambda m: m.eval() if isinstance(m, nn.Dropout) else None)
    check_same(ours, plain, x)
    assert torch.allclose(ours.hidden1.norm.running_mean, plain[1].running_mean)
    ours.eval(), plain.eval()
    check_same(ours, plain, x)


def test_cnn_feedforward_equals_plain(device):
    ours = models.cnn(image_size=8).to(device)
    plain = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10),
    ).to(device)
    check_same(ours, plain, torch.rand(4, 1, 8, 8, device=device))


def test_resnet20_feedforward_equals_plain(device):
    ours = models.resnet20().to(device)
    plain = PlainResNet20().to(device)
    x = torch.randn(4, 3, 16, 16, device=device)
    check_same(ours, plain, x, atol=1e-4)
    ours.eval(), plain.eval()
    check_same(ours, plain, x, atol=1e-4)


def test_conv1d_and_indrnn_feedforward_equal_plain(device):
    conv = layers.Conv1d(3, 5, 3, padding=1, node="softplus").to(device)
    plain = nn.Sequential(nn.Conv1d(3, 5, 3, padding=1), nn.Softplus()).to(device)
    check_same(conv, plain, torch.randn(2, 3, 7, device=device))

    rnn = layers.IndRNN(4, 6).to(device)
    x = torch.randn(3, 5, 4, device=device)
    with handlers.feedforward():
        out = rnn(x)
    h, ref = torch.zeros(3, 6, device=device), []
    for t in range(5):
        h = F.relu(x[:, t] @ rnn.weight.T + rnn.bias + rnn.recurrent_weight * h)
        ref.append(h)
    assert torch.allclose(out, torch.stack(ref, 1), atol=1e-6)


def test_leading_sample_dims_pass_through(device):
    net = models.mlp(6, [8], 2).to(device)
    x = torch.randn(3, 5, 6, device=device)
    with handlers.feedforward():
        batched = net(x)
        looped = torch.stack([net(xi) for xi in x])
    assert torch.allclose(batched, looped, atol=1e-6)
    cnet = models.cnn(image_size=8).to(device)
    xi = torch.rand(2, 3, 1, 8, 8, device=device)
    with handlers.feedforward():
        assert torch.allclose(cnet(xi)[1], cnet(xi[1]), atol=1e-5)


def test_site_names_are_readable_and_unique():
    import pyro.poutine as poutine

    net = models.resnet20(blocks=1, in_channels=1)
    tr = poutine.trace(net).get_trace(torch.rand(2, 1, 8, 8))
    names = [n for n, s in tr.nodes.items() if s["type"] == "sample"]
    assert names == [
        "stage1.block0.act1", "stage1.block0.act2", "stage2.block0.act1",
        "stage2.block0.act2", "stage3.block0.act1", "stage3.block0.act2", "act",
    ]
    assert tr.nodes["stage2.block0.act2"]["fn"].event_shape == (32, 4, 4)


def test_state_dict_round_trip_and_to_device(device):
    net = models.mlp(5, [7], 2, norm="batch")
    clone = models.mlp(5, [7], 2, norm="batch")
    clone.load_state_dict(net.state_dict())
    net, clone = net.to(device).eval(), clone.to(device).eval()
    x = torch.randn(4, 5, device=device)
    with handlers.feedforward():
        assert torch.equal(net(x), clone(x))
    assert all(p.device.type == device.type for p in net.parameters())


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: layers.Dense(4, 3)(torch.randn(2, 5)), ValueError, r"shape \(\.\.\., 4\)"),
        (lambda: layers.Dense(4, 3)(torch.ones(2, 4).long()), TypeError, "floating-point"),
        (lambda: layers.Dense(4, 3, node="swish"), ValueError, "unknown node"),
        (lambda: layers.Dense(0, 3), ValueError, "in_features"),
        (lambda: layers.Dense(4, 3, norm="group"), ValueError, "norm must be one of"),
        (lambda: layers.Conv2d(3, 4, 3)(torch.randn(2, 1, 8, 8)), ValueError, "expected input"),
        (lambda: layers.Conv2d(3, 4, 3)(torch.randn(3, 8, 8)), ValueError, "at least 4 dims"),
        (lambda: layers.Dropout(1.0), ValueError, r"p must be in \[0, 1\)"),
        (lambda: layers.IndRNN(3, 4)(torch.randn(2, 3)), ValueError, "at least 3 dims"),
        (lambda: models.cnn(image_size=10), ValueError, "divisible by 4"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_expanded_inputs_are_computed_once_and_match_materialised_copies():
    from pyrocg.layers.base import broadcast_apply

    calls = []

    def fn(rows):
        calls.append(rows.shape)
        return rows * 2

    x = torch.randn(3, 4)
    out = broadcast_apply(fn, x.expand(5, 3, 4), 1)
    assert calls == [(1, 3, 4)] and out.shape == (5, 3, 4)
    # Networks give the same outputs and gradients on expanded and on materialised copies.
    for net in (models.mlp(4, [6], 2, dropout=0.3), models.cnn(image_size=8)):
        xi = torch.randn(3, 4) if isinstance(net[0], layers.Dense) else torch.rand(3, 1, 8, 8)
        with handlers.feedforward():
            a = net(xi.expand((5,) + xi.shape))
            b = net(xi.repeat((5,) + (1,) * xi.dim()))
        assert torch.allclose(a, b, atol=1e-6)
        ga = torch.autograd.grad(a.sum(), list(net.parameters()))
        gb = torch.autograd.grad(b.sum(), list(net.parameters()))
        for u, v in zip(ga, gb, strict=True):
            assert torch.allclose(u, v, atol=1e-4)


def test_layer_checks_name_the_layer_with_a_non_finite_input_or_energy():
    from pyrocg import validation

    net = models.mlp(3, [4], 2, node="binary")
    bad = torch.tensor([[0.0, float("nan"), 1.0]])
    with handlers.feedforward():
        assert torch.isnan(net(bad)).all()  # off by default: NaN propagates, nothing raised
    with validation.layer_checks(), pytest.raises(ValueError, match="hidden1: input has 1 NaN"):
        net(bad)
    with torch.no_grad():
        net.hidden1.weight[0, 0] = float("inf")
    with validation.layer_checks(), pytest.raises(ValueError, match="hidden1: energy has"):
        net(torch.ones(1, 3))  # unhandled: a binary node would draw 0/1 from a NaN energy
    with validation.layer_checks(), validation.validation_enabled(False):
        net(torch.ones(1, 3))  # the master switch turns layer checks off too
    assert not validation.layer_checks_enabled()

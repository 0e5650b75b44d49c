"""Amortised VI over hidden nodes: ELBO vs the exact log-likelihood by enumeration."""

import itertools

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.infer import TraceGraph_ELBO

from pyrocg import infer, models
from pyrocg.infer.amortised import _guide_log_weights

B = 5


def _setup(hidden=(2, 2), node="binary", seed=0):
    torch.manual_seed(seed)
    net = models.mlp(3, list(hidden), 3, node=node).double()
    for p in net.parameters():  # larger weights: a posterior far from the prior
        p.data.mul_(3.0)
    x = torch.randn(B, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (B,))
    return net, x, y


def _data_log_prob(trace) -> torch.Tensor:
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample" and any(f.name == "data" for f in site["cond_indep_stack"]):
            total = total + site["fn"].log_prob(site["value"])
    return total


def _configs(net):
    """Every joint value of the hidden binary layers: list of {site: (B, units)}."""
    widths = [(m.site_name, m.out_features) for m in net.children() if m.node is not None]
    total = sum(w for _, w in widths)
    out = []
    for bits in itertools.product([0.0, 1.0], repeat=total):
        values, i = {}, 0
        for name, w in widths:
            values[name] = torch.tensor(bits[i:i + w], dtype=torch.float64).expand(B, w)
            i += w
        out.append(values)
    return out


def _exact(model, x, y):
    """Exact log p(y|x) and exact ELBO of the model's guide, per datum, by enumeration."""
    joint, log_q = [], []
    for values in _configs(model.net):
        joint.append(_data_log_prob(
            poutine.trace(poutine.condition(model.model, data=values)).get_trace(x, y)))
        log_q.append(_data_log_prob(
            poutine.trace(poutine.condition(model.guide, data=values)).get_trace(x, y)))
    joint, log_q = torch.stack(joint), torch.stack(log_q)  # (configs, B)
    q = log_q.exp()
    assert torch.allclose(q.sum(0), torch.ones(B, dtype=torch.float64))  # a proper guide
    elbo = (q * (joint - log_q)).sum(0)
    return joint.logsumexp(0), elbo, joint


def test_elbo_is_below_the_exact_log_likelihood_and_pyro_estimates_it():
    net, x, y = _setup()
    model = infer.AmortisedModel(net, infer.Categorical(B))
    model.double()
    log_lik, elbo, _ = _exact(model, x, y)
    assert (elbo <= log_lik + 1e-12).all()
    assert (log_lik - elbo).max() > 1e-3  # a mean-field-ish guide is not the posterior
    # Pyro's objective is this ELBO: the Monte-Carlo mean of log p(y, h|x) - log q(h|x, y).
    pyro.set_rng_seed(0)
    log_w = _guide_log_weights(model, x, y, 4000)
    mc, se = log_w.mean(0), log_w.std(0) / 4000**0.5
    assert ((mc - elbo).abs() <= 5 * se + 1e-9).all()


def test_loss_value_and_gradient_are_trace_graph_elbos():
    net, x, y = _setup()
    model = infer.AmortisedModel(net, infer.Categorical(B)).double()
    assert isinstance(model.elbo, TraceGraph_ELBO)
    pyro.set_rng_seed(3)
    log_w = _guide_log_weights(model, x, y, 1)
    pyro.clear_param_store()  # the decaying-average baselines live there
    pyro.set_rng_seed(3)
    loss = model.loss(x, y)
    assert float(loss.detach()) == pytest.approx(-float(log_w.detach().sum()) / B, rel=1e-10)
    params = [p for p in model.parameters()]
    ours = torch.autograd.grad(loss, params, allow_unused=True)
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    for p in params:
        p.grad = None
    scale = 1.0 / B
    TraceGraph_ELBO().loss_and_grads(poutine.scale(model.model, scale),
                                     poutine.scale(model.guide, scale), x, y)
    for p, g in zip(params, ours, strict=True):
        ref = torch.zeros_like(p) if p.grad is None else p.grad
        assert torch.allclose(ref, torch.zeros_like(p) if g is None else g, atol=1e-10)


class _Table(TorchDistribution):
    """A distribution over the rows of ``configs`` ``(S, units)`` with ``logits`` ``(B, S)``."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, configs, logits):
        self.configs, self.logits = configs, logits.log_softmax(-1)
        super().__init__(logits.shape[:-1], configs.shape[-1:])

    def sample(self, sample_shape=torch.Size()):
        idx = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
        return self.configs[idx]

    def log_prob(self, value):
        match = (value.unsqueeze(-2) == self.configs).all(-1)  # (..., B, S)
        return (self.logits * match).sum(-1)


def test_the_gap_vanishes_when_the_guide_is_the_exact_posterior():
    net, x, y = _setup(hidden=(3,))
    base = infer.AmortisedModel(net, infer.Categorical(B)).double()
    log_lik, _, joint = _exact(base, x, y)
    configs = torch.stack([c["hidden1"][0] for c in _configs(net)])  # (8, 3)
    posterior = (joint - log_lik).T  # (B, 8)

    class Exact(torch.nn.Module):
        def forward(self, x, y):  # x: K copies of the B data (importance sampling)
            with pyro.plate("data", B, subsample=torch.arange(x.shape[0])):
                pyro.sample("hidden1", _Table(configs, posterior.repeat(x.shape[0] // B, 1)))

    model = infer.AmortisedModel(net, infer.Categorical(B), guide=Exact())
    for seed in range(3):
        pyro.set_rng_seed(seed)
        expected = -float(log_lik.detach().sum()) / B
        assert float(model.loss(x, y).detach()) == pytest.approx(expected, rel=1e-10)
    est = infer.marginal_log_likelihood(model, x, y, num_samples=16)
    assert torch.allclose(est.pointwise, log_lik, atol=1e-10)
    assert est.stderr.abs().max() < 1e-6 and torch.allclose(est.ess, torch.full((B,), 16.0,
                                                                                dtype=est.ess.dtype))


def test_training_the_inference_network_shrinks_the_gap():
    net, x, y = _setup(hidden=(3,), seed=1)
    model = infer.AmortisedModel(net, infer.Categorical(B)).double()
    log_lik, elbo0, _ = _exact(model, x, y)
    opt = torch.optim.Adam(model.guide.parameters(), lr=0.1)  # the network stays fixed
    pyro.set_rng_seed(0)
    for _ in range(100):
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
    _, elbo1, _ = _exact(model, x, y)
    gap0, gap1 = float((log_lik - elbo0).sum().detach()), float((log_lik - elbo1).sum().detach())
    assert (elbo1 <= log_lik + 1e-12).all()
    assert gap1 < 0.6 * gap0, (gap0, gap1)


def test_importance_sampling_converges_to_the_exact_log_likelihood():
    net, x, y = _setup()
    model = infer.AmortisedModel(net, infer.Categorical(B)).double()
    log_lik, _, _ = _exact(model, x, y)
    pyro.set_rng_seed(1)
    est = infer.marginal_log_likelihood(model, x, y, num_samples=3000, chunk_size=700)
    assert est.num_samples == 3000 and est.proposal == "guide"
    assert ((est.pointwise - log_lik).abs() <= 5 * est.stderr + 1e-6).all()
    ff = infer.CGModel(net, infer.Categorical(B), "feedforward")
    prior = infer.marginal_log_likelihood(ff, x, y, num_samples=3000)
    assert prior.proposal == "prior"
    assert ((prior.pointwise - log_lik).abs() <= 5 * prior.stderr + 1e-6).all()


@pytest.mark.parametrize("node", ["softplus", "relu"])
def test_rectified_nodes_guide_and_prior_estimates_agree(node):
    """The guide's and the model's densities share one base measure (atom at 0 + Lebesgue):
    importance sampling with the guide and with the prior estimate the same log p(y|x)."""
    net, x, y = _setup(hidden=(2,), node=node)
    model = infer.AmortisedModel(net, infer.Categorical(B)).double()
    with torch.no_grad():
        for lin in model.guide.maps:  # a guide that differs from the prior
            lin.weight[:, -3:].normal_(0.0, 0.3)
    pyro.set_rng_seed(0)
    a = infer.marginal_log_likelihood(model, x, y, num_samples=4000)
    b = infer.marginal_log_likelihood(model, x, y, num_samples=4000, proposal="prior")
    tol = 5 * (a.stderr**2 + b.stderr**2).sqrt() + 1e-3
    assert ((a.pointwise - b.pointwise).abs() <= tol).all()
    assert isinstance(model.elbo, pyro.infer.Trace_ELBO)  # reparametrised nodes


def test_fit_and_predict_an_amortised_sigmoid_belief_net():
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    y = (x[:, 0] + x[:, 1] > 0).long()
    from pyrocg.data import DataSplits, Split

    data = DataSplits(Split(x[:150], y[:150]), Split(x[150:], y[150:]), Split(x[:0], y[:0]),
                      "classification", "toy", (4,), 2)
    model = infer.AmortisedModel(models.mlp(4, [16], 2, node="binary"), infer.Categorical(150))
    history = infer.fit(model, data, infer.TrainConfig(epochs=10, batch_size=50, lr=0.02,
                                                       progress=False, eval_samples=5))
    assert sum(h["loss"] for h in history[-3:]) / 3 < history[0]["loss"]
    metrics = infer.evaluate(model, x[150:], y[150:], num_samples=50)
    assert metrics["accuracy"] > 0.8
    pred = infer.predict(model, x[150:], num_samples=7)
    assert pred.outputs.shape == (7, 50, 2)


def test_bad_input():
    lik = infer.Categorical(B)
    with pytest.raises(ValueError, match="chain of Dense"):
        infer.AmortisedModel(models.mlp(3, [4], 2, dropout=0.2), lik)
    with pytest.raises(ValueError, match="chain of Dense"):
        infer.AmortisedModel(models.cnn(image_size=8), lik)
    with pytest.raises(ValueError, match="estimator"):
        infer.AmortisedModel(models.mlp(3, [4], 2), lik, estimator="reinforce")
    with pytest.raises(TypeError, match="AmortisedModel"):
        infer.CGModel(models.mlp(3, [4], 2), lik, infer.AmortisedVI()).loss(
            torch.randn(B, 3), torch.zeros(B, dtype=torch.long))
    model = infer.AmortisedModel(models.mlp(3, [4], 2, node="binary"), lik)
    x, y = torch.randn(B, 3), torch.zeros(B, dtype=torch.long)
    with pytest.raises(ValueError, match="needs the labels"):
        model.guide(x)
    with pytest.raises(ValueError, match="num_samples"):
        infer.marginal_log_likelihood(model, x, y, num_samples=0)
    with pytest.raises(ValueError, match="proposal='guide' needs"):
        infer.marginal_log_likelihood(infer.CGModel(models.mlp(3, [4], 2), lik), x, y,
                                      proposal="guide")
    with pytest.raises(ValueError, match="same"):
        infer.marginal_log_likelihood(model, x, y[:2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amortised_on_cuda():
    model = infer.AmortisedModel(models.mlp(3, [4], 2, node="binary"), infer.Categorical(B))
    model.cuda()
    x = torch.randn(B, 3, device="cuda")
    y = torch.zeros(B, dtype=torch.long, device="cuda")
    loss = model.loss(x, y)
    loss.backward()
    assert loss.device.type == "cuda"
    est = infer.marginal_log_likelihood(model, x, y, num_samples=10)
    assert est.pointwise.device.type == "cuda"
    assert infer.predict(model, x, num_samples=3).outputs.device.type == "cuda"

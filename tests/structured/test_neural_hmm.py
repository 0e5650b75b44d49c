"""ChainHMM / NeuralHMM against brute-force enumeration and Pyro's DiscreteHMM."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyrocg import models
from pyrocg.structured import ChainHMM, NeuralHMM

C, T, B = 3, 4, 2


def _brute(init, trans, obs_logp):
    """Joint log p(x, z_{0:T-1}) of every path (z_{-1} summed out), (B, C**T), and paths."""
    init = init.log_softmax(-1)
    trans = trans.log_softmax(-1)
    steps, c = obs_logp.shape[-2:]
    paths = list(itertools.product(range(c), repeat=steps))
    scores = []
    for path in paths:
        s = torch.logsumexp(init[..., :] + trans[..., 0, :, path[0]], -1)
        s = s + obs_logp[..., 0, path[0]]
        for t in range(1, steps):
            s = s + trans[..., t, path[t - 1], path[t]] + obs_logp[..., t, path[t]]
        scores.append(s)
    return torch.stack(scores, -1), torch.tensor(paths)


def _problem(emission, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    init = torch.randn(B, C, generator=g, dtype=dtype)
    trans = torch.randn(B, T, C, C, generator=g, dtype=dtype) * 2
    if emission == "normal":
        obs = dist.Normal(torch.randn(B, T, C, generator=g, dtype=dtype), 0.7)
        x = torch.randn(B, T, generator=g, dtype=dtype)
    else:
        obs = dist.Categorical(logits=torch.randn(B, T, C, 5, generator=g, dtype=dtype))
        x = torch.randint(0, 5, (B, T), generator=g)
    return init, trans, obs, x


@pytest.mark.parametrize("emission", ["normal", "categorical"])
def test_log_prob_marginals_viterbi_equal_brute_force_and_discrete_hmm(emission):
    init, trans, obs, x = _problem(emission)
    hmm = ChainHMM(init, trans, obs)
    obs_logp = obs.log_prob(x.unsqueeze(-1))
    joint, paths = _brute(init, trans, obs_logp)
    log_z = joint.logsumexp(-1)
    assert torch.allclose(hmm.log_prob(x), log_z, atol=1e-10)
    assert torch.allclose(hmm.log_prob(x), dist.DiscreteHMM(init, trans, obs).log_prob(x),
                          atol=1e-10)
    post = (joint - log_z[:, None]).exp()  # (B, paths)
    onehot = torch.nn.functional.one_hot(paths, C).double()  # (paths, T, C)
    expected = torch.einsum("bp,ptc->btc", post, onehot)
    assert torch.allclose(hmm.posterior_marginals(x), expected, atol=1e-10)
    score, path = hmm.viterbi(x)
    best = joint.argmax(-1)
    assert torch.equal(path, paths[best])
    assert torch.allclose(score, joint.max(-1).values, atol=1e-10)


def test_ffbs_samples_follow_the_exact_posterior():
    init, trans, obs, x = _problem("normal")
    hmm = ChainHMM(init, trans, obs)
    joint, paths = _brute(init, trans, obs.log_prob(x.unsqueeze(-1)))
    post = (joint - joint.logsumexp(-1, keepdim=True)).exp()
    torch.manual_seed(0)
    n = 20000
    draws = hmm.sample_posterior(x, n)  # (n, B, T)
    assert draws.shape == (n, B, T)
    code = (draws * C ** torch.arange(T - 1, -1, -1)).sum(-1)  # path index, first step slowest
    freq = torch.stack([torch.bincount(code[:, b], minlength=C**T) for b in range(B)]) / n
    se = (post * (1 - post) / n).sqrt()
    assert ((freq - post).abs() <= 5 * se + 1e-3).all()


def test_ragged_lengths_equal_the_truncated_sequences():
    init, trans, obs, x = _problem("normal")
    lengths = torch.tensor([4, 2])
    hmm = ChainHMM(init, trans, obs, lengths=lengths)
    x_padded = x.clone()
    x_padded[1, 2:] = float("nan")  # padding is never scored
    lp = hmm.log_prob(x_padded)
    short = ChainHMM(init[1], trans[1, :2], dist.Normal(obs.loc[1, :2], obs.scale[1, :2]))
    assert torch.allclose(lp[0], ChainHMM(init, trans, obs).log_prob(x)[0])
    assert torch.allclose(lp[1], short.log_prob(x[1, :2]))
    marg = hmm.posterior_marginals(x_padded)
    assert torch.allclose(marg[1, :2], short.posterior_marginals(x[1, :2]))
    assert marg[1, 2:].abs().sum() == 0
    assert torch.equal(hmm.viterbi(x_padded)[1][1, :2], short.viterbi(x[1, :2])[1])


def test_single_step_and_homogeneous_parameters():
    g = torch.Generator().manual_seed(2)
    init, trans = torch.randn(C, generator=g), torch.randn(C, C, generator=g)
    obs = dist.Normal(torch.randn(1, C, generator=g), 1.0)  # homogeneous emission
    x = torch.randn(6, generator=g)
    ours = ChainHMM(init, trans, obs).log_prob(x)
    theirs = dist.DiscreteHMM(init, trans, obs).log_prob(x)
    assert torch.allclose(ours, theirs, atol=1e-5)
    one = ChainHMM(init, trans, obs)
    assert torch.allclose(one.log_prob(x[:1]), dist.DiscreteHMM(init, trans, obs).log_prob(x[:1]),
                          atol=1e-6)
    assert torch.allclose(one.posterior_marginals(x[:1]).sum(-1), torch.ones(1))


def test_ancestral_samples_have_the_model_state_marginals():
    init = torch.tensor([2.0, 0.0, -1.0])
    trans = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    obs = dist.Normal(torch.tensor([[-5.0, 0.0, 5.0]]).expand(3, 3), 0.1)
    hmm = ChainHMM(init, trans.expand(3, 3, 3), obs)
    torch.manual_seed(0)
    states, x = hmm.sample_with_states((4000,))
    assert states.shape == (4000, 3) and x.shape == (4000, 3)
    assert torch.allclose(x, obs.loc[0][states], atol=0.6)  # each step emits its state's mean
    p = init.softmax(-1) @ trans.softmax(-1)  # marginal of z_0
    freq = torch.bincount(states[:, 0], minlength=3) / 4000
    assert torch.allclose(freq, p, atol=0.03)


def _nets():
    torch.manual_seed(0)
    emission = models.mlp(4, [8], C * 5, node="softplus")
    transition = models.mlp(4, [8], C * C, node="binary")
    return emission, transition


def test_neural_hmm_equals_discrete_hmm_with_the_same_networks_values_and_gradients():
    emission, transition = _nets()
    hmm = NeuralHMM(C, emission, "categorical", transition)
    u, y = torch.randn(B, T, 4), torch.randint(0, 5, (B, T))
    ours = hmm(u).log_prob(y)
    with pyro.poutine.block(), __import__("pyrocg").handlers.feedforward():
        logits = emission(u).reshape(B, T, C, 5)
        trans = transition(u).reshape(B, T, C, C)
    theirs = dist.DiscreteHMM(hmm.initial_logits, trans, dist.Categorical(logits=logits)
                              ).log_prob(y)
    assert torch.allclose(ours, theirs, atol=1e-5)
    g1 = torch.autograd.grad(ours.sum(), list(emission.parameters()))
    g2 = torch.autograd.grad(theirs.sum(), list(emission.parameters()))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2, strict=True))


@pytest.mark.parametrize("emission,k", [("gaussian", 2 * 2), ("bernoulli", 3)])
def test_neural_hmm_vector_emissions_equal_discrete_hmm(emission, k):
    torch.manual_seed(0)
    net = models.mlp(4, [8], C * k)
    hmm = NeuralHMM(C, net, emission)
    u = torch.randn(B, T, 4)
    d = hmm(u)
    x = torch.randn(B, T, k // 2) if emission == "gaussian" else torch.bernoulli(
        torch.full((B, T, k), 0.5))
    theirs = dist.DiscreteHMM(hmm.initial_logits, hmm.transition_logits,
                              d.observation_dist).log_prob(x)
    assert torch.allclose(d.log_prob(x), theirs, atol=1e-5)


def test_neural_hmm_trains_inside_svi_and_its_loss_is_the_negative_log_likelihood():
    emission, _ = _nets()
    hmm = NeuralHMM(C, emission)
    u, y = torch.randn(8, T, 4), torch.randint(0, 5, (8, T))

    def model(u, y):
        pyro.module("hmm", hmm)
        with pyro.plate("seqs", u.shape[0]):
            pyro.sample("y", hmm(u), obs=y)

    def guide(u, y):
        pass

    pyro.clear_param_store()
    elbo = Trace_ELBO()
    loss0 = elbo.loss(model, guide, u, y)
    assert loss0 == pytest.approx(-float(hmm(u).log_prob(y).sum().detach()), rel=1e-5)
    svi = SVI(model, guide, Adam({"lr": 0.05}), elbo)
    for _ in range(30):
        svi.step(u, y)
    assert elbo.loss(model, guide, u, y) < loss0 - 1.0


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(initial_logits=torch.zeros(3), transition_logits=torch.zeros(2, 2)), ValueError,
     "end in"),
    (dict(initial_logits=torch.zeros(3, dtype=torch.long)), TypeError, "floating"),
    (dict(observation_dist=dist.Normal(torch.zeros(4, 2), 1.0)), ValueError, "batch shape"),
    (dict(observation_dist="normal"), TypeError, "Distribution"),
    (dict(lengths=torch.tensor([0, 3])), ValueError, r"\[1, 4\]"),
    (dict(lengths=torch.tensor([2.0, 3.0])), TypeError, "integer"),
])
def test_chain_hmm_bad_input(kwargs, error, match):
    args = dict(initial_logits=torch.zeros(2, 3), transition_logits=torch.zeros(2, 4, 3, 3),
                observation_dist=dist.Normal(torch.zeros(2, 4, 3), 1.0))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ChainHMM(**args)


def test_neural_hmm_bad_input():
    net = models.mlp(4, [8], 7)
    with pytest.raises(ValueError, match="num_states"):
        NeuralHMM(0, net)
    with pytest.raises(ValueError, match="emission"):
        NeuralHMM(2, net, "poisson")
    with pytest.raises(ValueError, match="multiple of num_states"):
        NeuralHMM(2, net)(torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match="steps"):
        ChainHMM(torch.zeros(2), torch.zeros(4, 2, 2), dist.Normal(torch.zeros(4, 2), 1.0)
                 ).log_prob(torch.zeros(5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_neural_hmm_on_cuda():
    emission, transition = _nets()
    hmm = NeuralHMM(C, emission, "categorical", transition).cuda()
    u, y = torch.randn(B, T, 4, device="cuda"), torch.randint(0, 5, (B, T), device="cuda")
    d = hmm(u)
    lp = d.log_prob(y)
    assert lp.device.type == "cuda"
    cpu = NeuralHMM(C, emission.cpu(), "categorical", transition.cpu())
    cpu.load_state_dict({k: v.cpu() for k, v in hmm.state_dict().items()})
    assert torch.allclose(lp.cpu(), cpu(u.cpu()).log_prob(y.cpu()), atol=1e-4)
    assert d.posterior_marginals(y).device.type == "cuda"
    assert d.viterbi(y)[1].device.type == "cuda"
    assert d.sample_posterior(y, 3).device.type == "cuda"

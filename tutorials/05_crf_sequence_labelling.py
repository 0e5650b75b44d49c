# %% [markdown]
# # 5. Deep CRF sequence labelling
#
# Noisy digit images form sequences whose labels follow a Markov chain (mostly `d → d+1`).
# A CNN reads each image; a linear-chain CRF with learned transitions on top decodes the
# whole sequence. We compare it with the same CNN and independent outputs, and check that
# the learned transitions recover the grammar.

# %%
import itertools
import os

import torch

from pyrocg import handlers, infer, layers, models, tasks
from pyrocg.structured import LinearChainCRF

QUICK = os.environ.get("PYROCG_QUICK") == "1"
data = tasks.digit_sequences(n_train=100 if QUICK else 600, n_test=50 if QUICK else 300)
print(data)

# %% [markdown]
# ## Train with and without the CRF
#
# `infer.ChainCRFLikelihood` turns the network's per-position outputs into the unary
# potentials of a `LinearChainCRF`; its loss is the exact negative conditional
# log-likelihood. Without the CRF (transitions fixed at zero) the outputs are independent
# softmaxes.

# %%
results = {}
for with_crf in (False, True):
    torch.manual_seed(0)
    cnn = models.cnn(1, 10, image_size=8, channels=(16, 32), hidden=64)
    crf = layers.ChainCRF(10, start_end=with_crf)
    if not with_crf:
        crf.transitions.requires_grad_(False)  # zero transitions = independent softmaxes
    # token_dims=3: the CNN sees one (1, 8, 8) image per position.
    model = infer.CGModel(cnn, infer.ChainCRFLikelihood(crf, len(data.train), token_dims=3))
    infer.fit(model, data, infer.TrainConfig(epochs=3 if QUICK else 15, batch_size=32, lr=3e-3,
                                             progress=False))
    res = infer.evaluate(model, data.test.x, data.test.y)
    name = "chain CRF" if with_crf else "independent"
    results[name] = res
    print(f"{name:12s} token accuracy {res['token_accuracy']:.3f}, "
          f"whole-sequence accuracy {res['sequence_accuracy']:.3f}")
assert results["chain CRF"]["token_accuracy"] > results["independent"]["token_accuracy"]

# %% [markdown]
# ## The learned transitions recover the grammar
#
# The labels mostly go `d → d+1 (mod 10)`, otherwise to any *other* digit: the largest
# entry of row `d` of the learned transition matrix should be `d + 1`.

# %%
best_next = crf.transitions.argmax(-1)
print("argmax of each transition row:", best_next.tolist())
hits = (best_next == (torch.arange(10) + 1) % 10).sum().item()
assert hits >= 8

# %% [markdown]
# ## k-best decoding
#
# The CRF is a distribution over whole sequences. Besides the Viterbi path (`argmax`),
# `topk(k)` returns the `k` most probable sequences and their scores, by a k-max semiring
# over the same chain programme. We take the unary potentials of the trained CNN on the test
# sequences (feed-forward mode) and check the k-best list against brute force on a
# 4-position window, where all `10^4` sequences can be enumerated.

# %%
x_test, y_test = data.test.x, data.test.y
with torch.no_grad(), handlers.feedforward():
    unary = cnn(x_test.flatten(0, 1)).view(*y_test.shape, 10)        # (batch, length, tags)
dist = crf(unary.detach())                                           # all test sequences
first = crf(unary[:5].detach())                                      # the first five of them
paths, scores = first.topk(5)                                        # (k, batch, length), (k, batch)
assert torch.equal(paths[0], first.argmax)                           # best = Viterbi
assert (scores[:-1] >= scores[1:]).all()                             # sorted, best first
assert torch.allclose(scores, first.score(paths), atol=1e-4)
probs = (scores - first.log_partition).exp()
print("probabilities of the 5 best sequences of test item 0:", [f"{p:.2e}" for p in probs[:, 0].tolist()])

window = LinearChainCRF(unary[:5, :4], crf.transitions.detach(), start=crf.start.detach(),
                        end=crf.end.detach())
every = torch.tensor(list(itertools.product(range(10), repeat=4)))     # (10**4, 4)
brute = window.score(every[:, None, :].expand(-1, 5, -1))               # (10**4, batch)
best_scores, _ = brute.topk(5, dim=0)
assert torch.allclose(window.topk(5)[1], best_scores, atol=1e-4)
print("top-5 scores on the window equal brute force over all 10^4 sequences")

# %% [markdown]
# ## Decoding with constraints
#
# We know something the CRF only learned softly: a digit is never followed by itself (a
# jump goes to *another* digit). `allowed` transitions turn that into a hard constraint:
# forbidden transitions get potential `-inf`, in `log Z`, marginals, samples, Viterbi and
# k-best alike.

# %%
allowed = ~torch.eye(10, dtype=torch.bool)
constrained = LinearChainCRF(unary.detach(), crf.transitions.detach(), start=crf.start.detach(),
                             end=crf.end.detach(), allowed=allowed)
for name, d in (("unconstrained", dist), ("no repeats", constrained)):
    path = d.argmax
    repeats = (path[:, 1:] == path[:, :-1]).sum().item()
    acc = (path == y_test).float().mean().item()
    print(f"{name:14s} Viterbi: {repeats} repeated digits, token accuracy {acc:.3f}")
cpaths, cscores = LinearChainCRF(unary[:3].detach(), crf.transitions.detach(), start=crf.start.detach(),
                                 end=crf.end.detach(), allowed=allowed).topk(3)
assert not (cpaths[..., 1:] == cpaths[..., :-1]).any()                   # no k-best path repeats
samples = constrained.sample((20,))                                      # exact samples, (20, batch, length)
assert not (samples[..., 1:] == samples[..., :-1]).any()
assert (constrained.score(constrained.argmax) <= dist.score(dist.argmax) + 1e-5).all()  # max over a subset
assert torch.allclose(constrained.marginals.sum(-1), torch.ones(y_test.shape))

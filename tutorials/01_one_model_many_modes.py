# %% [markdown]
# # 1. One model, every mode
#
# A network is written **once**, as a chain graph: layers whose units are random variables
# with explicit `pyro.sample` sites. Which *execution mode* it runs in — the deterministic
# network, PCFF, MC dropout, ancestral sampling — depends only on the Pyro effect handler
# around it. This tutorial runs one small MLP in each mode and checks what each claims:
#
# * feed-forward mode **is** the plain PyTorch network: same outputs, same gradients;
# * PCFF samples a fraction `p` of the node elements and collapses the rest;
# * MC dropout keeps only the dropout masks random and runs `T` passes as one batch;
# * with no handler, every node is sampled (ancestral sampling).

# %%
import os

import pyro
import torch

from pyrocg import handlers, models, modes
from pyrocg.handlers import node_of
from pyrocg.reference import copy_weights, plain_mlp

QUICK = os.environ.get("PYROCG_QUICK") == "1"  # the test suite's small-size switch
torch.manual_seed(0)
net = models.mlp(8, [32, 32], 3, dropout=0.25)
x = torch.randn(64, 8)
print(net)

# %% [markdown]
# ## Feed-forward ≡ plain PyTorch
#
# Under `handlers.feedforward()` every node takes its feed-forward statistic
# `q = E[T(X)]` — for the default ReLU nodes that is `relu(e)` — and every dropout node its
# mean. With the same weights, the output and the gradients of every parameter equal those
# of `nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)`.

# %%
plain = plain_mlp(8, [32, 32], 3)
copy_weights(net, plain)
y = torch.randint(0, 3, (64,))

with handlers.feedforward():
    logits = net(x)
loss_cg = torch.nn.functional.cross_entropy(logits, y)
loss_plain = torch.nn.functional.cross_entropy(plain(x), y)
grads_cg = torch.autograd.grad(loss_cg, list(net.parameters()))
grads_plain = torch.autograd.grad(loss_plain, list(plain.parameters()))

assert torch.allclose(logits, plain(x), atol=1e-6)
assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_cg, grads_plain, strict=True))
print(f"max |logit difference| = {(logits - plain(x)).abs().max():.2e}; "
      f"{len(grads_cg)} parameter gradients equal")

# %% [markdown]
# ## PCFF: partially collapsed feed-forward
#
# `handlers.pcff(p)` decides per node *element*: sample it with probability `p`, or collapse
# it to its feed-forward statistic. The trace shows which elements were sampled. A sampled
# ReLU node with a negative energy usually lands on 0 — its feed-forward value — so we count
# among the elements with a positive energy, where a sample never equals `relu(e)` exactly.

# %%
rate = 0.3
with pyro.poutine.trace() as tr, handlers.pcff(rate):
    net(x)
site = tr.trace.nodes["hidden1"]
node = node_of(site["fn"])
positive = node.feedforward > 0
sampled = (site["value"] != node.feedforward)[positive].float().mean().item()
print(f"PCFF({rate}): fraction of positive-energy hidden1 elements sampled = {sampled:.3f} "
      f"(of {int(positive.sum())})")
assert abs(sampled - rate) < 0.06  # ~5 binomial standard errors
# The site stays a Pyro sample site, but contributes no log-density (it is 'observed', masked).
assert site["is_observed"] and site["type"] == "sample"

# %% [markdown]
# `p = 0` is the feed-forward network and `p` may differ per layer (a mapping from site name
# to rate):

# %%
with handlers.pcff(0.0):
    assert torch.equal(net(x), logits)
with pyro.poutine.trace() as tr, handlers.pcff({"hidden1": 1.0, "hidden2": 0.0}):
    net(x)
h2 = tr.trace.nodes["hidden2"]
assert torch.equal(h2["value"], node_of(h2["fn"]).feedforward)  # hidden2 collapsed
print("per-layer rates: hidden1 sampled, hidden2 collapsed")

# %% [markdown]
# ## MC dropout: T passes in one batch
#
# `handlers.mc_dropout()` collapses the chain-graph nodes and keeps the dropout masks random.
# A leading sample dimension runs `T` passes at once: no Python loop.

# %%
T = 20 if QUICK else 200
with handlers.mc_dropout():
    passes = net(x.expand(T, 64, 8))
assert passes.shape == (T, 64, 3)
spread = passes.std(0).mean().item()
print(f"{T} passes, mean predictive std of the logits {spread:.3f}")
assert spread > 0  # the masks differ per pass, but their average stays near the
with handlers.feedforward():  # deterministic network (not equal: the ReLUs are nonlinear)
    gap = (passes.mean(0) - net(x)).abs().mean().item()
print(f"mean |MC average - feed-forward| = {gap:.3f}")
assert gap < spread

# %% [markdown]
# ## No handler: ancestral sampling
#
# Without a handler, the model samples every node (and dropout mask) in topological order,
# like any Pyro model; the trace lists the sites.

# %%
with pyro.poutine.trace() as tr:
    net(x)
sites = [n for n, s in tr.trace.nodes.items() if s["type"] == "sample"]
print(sites)
assert sites == ["hidden1", "drop1", "hidden2", "drop2"]
assert not any(tr.trace.nodes[n]["is_observed"] for n in sites)

# %% [markdown]
# ## Modes as objects
#
# For training and prediction a *mode object* (`pyrocg.modes`) names these choices once:
# its handlers, what it needs from the network, and how many prediction passes it averages.

# %%
for mode in (modes.FeedForward(), modes.PCFF(0.3), modes.MCDropout()):
    mode.check(net)  # MCDropout would refuse a network without dropout nodes
    with mode.predict_handler():
        out = net(x)
    print(f"{mode!r:28s} trains under {type(mode.train_handler()).__name__:22s} "
          f"predicts with {mode.num_samples} pass(es)")
assert modes.FeedForward().num_samples == 1 and modes.MCDropout().num_samples > 1

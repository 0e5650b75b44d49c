"""Tutorial 1 — one chain-graph model, many execution modes.

A network written once as a chain graph (layers with explicit ``pyro.sample`` sites) is run
as a deterministic network, with PCFF, with MC dropout and with ancestral sampling, only by
changing the handler around it. Run: ``python tutorials/01_one_model_many_modes.py``.
"""

import pyro
import torch

from pyrocg import handlers, models, modes
from pyrocg.handlers import node_of
from pyrocg.reference import copy_weights, plain_mlp

torch.manual_seed(0)
net = models.mlp(8, [32, 32], 3, dropout=0.25)
x = torch.randn(4, 8)

# 1. Feed-forward: every node collapsed to E[T(X)] — exactly the torch.nn network.
plain = plain_mlp(8, [32, 32], 3)
copy_weights(net, plain)
with handlers.feedforward():
    logits = net(x)
print("feed-forward equals torch.nn:", torch.allclose(logits, plain(x), atol=1e-6))

# 2. PCFF: each node element sampled with probability 0.3, collapsed otherwise.
with pyro.poutine.trace() as tr, handlers.pcff(0.3):
    net(x)
site = tr.trace.nodes["hidden1"]
sampled = (site["value"] != node_of(site["fn"]).feedforward).float().mean()
print(f"PCFF(0.3): fraction of hidden1 elements sampled = {sampled:.2f} "
      "(ReLU nodes at 0 look collapsed, so a bit below 0.3)")

# 3. MC dropout: 50 passes as one batch over a leading sample dimension.
with handlers.mc_dropout():
    passes = net(x.expand(50, 4, 8))
print("MC dropout: predictive std of the logits per class:", passes.std(0).mean(0))

# 4. No handler: ancestral sampling of every node (and dropout mask).
with pyro.poutine.trace() as tr:
    net(x)
print("ancestral sampling sites:", [n for n, s in tr.trace.nodes.items() if s["type"] == "sample"])

# 5. For training and prediction a mode object names these choices once (pyrocg.modes): its
# handlers, what it needs from the network, and how many prediction passes it averages.
for mode in (modes.FeedForward(), modes.PCFF(0.3), modes.MCDropout()):
    mode.check(net)  # MCDropout would refuse a network without dropout nodes
    with mode.predict_handler():
        out = net(x)
    print(f"{mode!r}: trains under {type(mode.train_handler()).__name__}, "
          f"predicts with {mode.num_samples} pass(es)")

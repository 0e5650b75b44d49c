# %% [markdown]
# # 6. Multi-label outputs with tree and mean-field CRFs, and grid CRFs
#
# Correlated outputs call for pairwise potentials between them. When the label graph is a
# **tree**, inference is exact (belief propagation); when it has loops — all pairs of labels,
# the pixels of an image — pyrocg unrolls **mean-field** updates and trains through them
# ("train the inference you use at test time"). This tutorial
#
# 1. learns a Chow–Liu tree over six correlated digit attributes and checks it against every
#    spanning tree;
# 2. trains an MLP with independent sigmoids, a tree CRF and a mean-field CRF on top, and
#    checks the tree CRF's marginals against brute-force enumeration;
# 3. labels the stroke pixels of noisy digit images with a mean-field grid CRF.

# %%
import itertools
import os
from collections import OrderedDict

import torch

from pyrocg import infer, layers, models, structured, tasks

QUICK = os.environ.get("PYROCG_QUICK") == "1"
EPOCHS = 3 if QUICK else 20
data = tasks.digit_attributes(n_train=200 if QUICK else 1000, n_val=50 if QUICK else 200,
                             n_test=100 if QUICK else 500)
names = list(tasks.ATTRIBUTES)
print(data)
print("attributes:", names)

# %% [markdown]
# ## A Chow–Liu tree over the labels
#
# The Chow–Liu tree is the maximum spanning tree of the pairwise mutual information of the
# label columns — the tree-structured distribution closest to the empirical one. With six
# labels there are `6^4 = 1296` labelled spanning trees (Cayley); we enumerate them all from
# their Prüfer sequences and check that none has more total information.

# %%
y_train = data.train.y
tree = structured.chow_liu_tree(y_train)
info = structured.mutual_information(y_train)                       # (V, V) nats
V = len(names)


def total_information(edges):
    return sum(info[a, b].item() for a, b in edges)


def prufer_edges(seq, n):
    degree = [1] * n
    for v in seq:
        degree[v] += 1
    edges = []
    for v in seq:
        leaf = min(u for u in range(n) if degree[u] == 1)
        edges.append((leaf, v))
        degree[leaf] -= 1
        degree[v] -= 1
    u, w = (u for u in range(n) if degree[u] == 1)
    return edges + [(u, w)]


best = max(total_information(prufer_edges(s, V)) for s in itertools.product(range(V), repeat=V - 2))
ours = total_information(tree.edges.tolist())
print("Chow–Liu edges:", [(names[a], names[b]) for a, b in tree.edges.tolist()])
print(f"its mutual information {ours:.4f} nats; best of all 1296 spanning trees {best:.4f}")
assert abs(ours - best) < 1e-9

# %% [markdown]
# ## Three output layers on one network
#
# * independent sigmoids: a mean-field CRF with **zero** updates is exactly that;
# * a tree CRF over the Chow–Liu tree (`MultiLabelTreeCRF`, exact);
# * a mean-field CRF over all pairs of labels (`MultiLabelMeanFieldCRF`, 5 unrolled updates).

# %%
outputs = {
    "independent": infer.MultiLabelCRFLikelihood(structured.MultiLabelMeanFieldCRF(V, num_iters=0),
                                                 len(data.train)),
    "tree CRF": structured.TreeCRFLikelihood(structured.MultiLabelTreeCRF(tree), len(data.train)),
    "mean-field CRF": infer.MultiLabelCRFLikelihood(structured.MultiLabelMeanFieldCRF(V, num_iters=5),
                                                    len(data.train)),
}
fitted = {}
for name, likelihood in outputs.items():
    torch.manual_seed(0)
    model = infer.CGModel(models.mlp(64, [128], V), likelihood)
    infer.fit(model, data, infer.TrainConfig(epochs=EPOCHS, batch_size=32, lr=1e-2, progress=False,
                                             eval_samples=1))
    fitted[name] = model
    res = infer.evaluate(model, data.test.x, data.test.y)
    print(f"{name:15s}", {k: round(v, 3) for k, v in res.items()})
    assert res["label_accuracy"] > 0.6

# %% [markdown]
# ## The tree CRF is exact
#
# Its marginals come from belief propagation, level by level. With six binary labels,
# brute force sums all `2^6 = 64` labellings; the two agree to float precision.

# %%
tree_model = fitted["tree CRF"]
crf_layer = tree_model.likelihood.crf
with torch.no_grad():
    logits = tree_model.net(data.test.x[:20])                         # (batch, V) (feed-forward)
    dist = crf_layer(logits)
    every = torch.tensor(list(itertools.product([0, 1], repeat=V)))   # (64, V)
    log_p = dist.log_prob(every[:, None, :].expand(-1, 20, -1))        # (64, batch)
    brute = (log_p.exp()[..., None] * every[:, None, :]).sum(0)       # P(y_v = 1), (batch, V)
print("max |BP marginal - brute force|:", (dist.marginals[..., 1] - brute).abs().max().item())
assert torch.allclose(dist.marginals[..., 1], brute, atol=1e-5)
assert torch.allclose(log_p.exp().sum(0), torch.ones(20), atol=1e-5)  # a normalised distribution
learned = crf_layer.edge_potentials.detach()
print("learned edge potentials (rows: parent label 0/1, columns: child label 0/1), first edge:\n", learned[0])

# %% [markdown]
# ## A grid CRF on image pixels
#
# Each pixel of a noisy 16×16 digit is labelled stroke / background. A small convolutional
# network gives per-pixel potentials; a mean-field CRF with a 4-neighbourhood (a learned
# Potts-like compatibility) smooths them, trained through its 5 unrolled updates. Zero
# updates are the per-pixel softmax.

# %%
strokes = tasks.digit_strokes(n_train=64 if QUICK else 600, n_val=16 if QUICK else 100,
                              n_test=32 if QUICK else 300)
grid_results = {}
for iters in (0, 5):
    torch.manual_seed(0)
    net = layers.Sequential(OrderedDict(conv1=layers.Conv2d(1, 16, 3, padding=1),
                                        out=layers.Conv2d(16, 2, 1, node=None)))
    likelihood = infer.GridCRFLikelihood(structured.GridMeanFieldCRF(2, num_iters=iters, neighbourhood=4),
                                         len(strokes.train))
    model = infer.CGModel(net, likelihood)
    infer.fit(model, strokes, infer.TrainConfig(epochs=EPOCHS, batch_size=32, lr=1e-2, progress=False,
                                                eval_samples=1))
    grid_results[iters] = infer.evaluate(model, strokes.test.x, strokes.test.y)["pixel_accuracy"]
    probs = infer.predict(model, strokes.test.x[:4]).mean                 # (batch, H, W, classes)
    print(f"{iters} mean-field updates: pixel accuracy {grid_results[iters]:.3f}")
    assert probs.shape == (4, 16, 16, 2) and torch.allclose(probs.sum(-1), torch.ones(4, 16, 16))
background = (strokes.test.y == 0).double().mean().item()
print(f"(all-background baseline: {background:.3f})")

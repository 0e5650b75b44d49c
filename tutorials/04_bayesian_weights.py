# %% [markdown]
# # 4. Bayesian weights with Pyro autoguides, compared in ArviZ
#
# `modes.BayesianWeights` makes every weight under a prior a global Pyro sample site; any
# Pyro guide then learns a posterior over them. Here one small network on a noisy
# two-moons-like problem is trained with four guides — pyrocg's mean-field Normal, the same
# with local reparametrisation, Pyro's `AutoNormal` and `AutoDelta` (a point estimate, MAP) —
# and `az.compare` ranks them by their expected log predictive density (PSIS-LOO).

# %%
import os
import warnings

import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyrocg import diagnostics, infer, metrics, models, modes
from pyrocg.data import DataSplits, Split
from pyrocg.diagnostics.arviz import import_arviz

az = import_arviz()
QUICK = os.environ.get("PYROCG_QUICK") == "1"
N, EPOCHS, T = (200, 12, 20) if QUICK else (600, 200, 200)

torch.manual_seed(0)
angle = torch.rand(2 * N) * torch.pi
label = torch.arange(2 * N) % 2
x = torch.stack([torch.cos(angle) - label, torch.sin(angle) * (1 - 2 * label) + 0.3 * label], -1)
x = x + 0.25 * torch.randn_like(x)
split = Split(x[:N], label[:N])
data = DataSplits(split, Split(x[N:N + N // 2], label[N:N + N // 2]), Split(x[N:], label[N:]),
                  "classification", "moons", (2,), num_classes=2)
print(data)

# %% [markdown]
# ## Four guides, one network definition
#
# The prior is `N(0, 1)` on weights and biases. Every model starts from the same
# initialisation; only the guide differs.

# %%
prior = infer.GaussianPrior(1.0, biases=True)
guides = {
    "mean-field": modes.BayesianWeights(prior=prior),
    "local-reparam": modes.BayesianWeights(prior=prior, local_reparam=True),
    "AutoNormal": modes.BayesianWeights(prior=prior, guide=AutoNormal),
    "AutoDelta": modes.BayesianWeights(prior=prior, guide=AutoDelta),
}
fitted, preds = {}, {}
for name, mode in guides.items():
    torch.manual_seed(0)
    model = infer.CGModel(models.mlp(2, [32, 32], 2), infer.Categorical(N), mode)
    history = infer.fit(model, data, infer.TrainConfig(epochs=EPOCHS, batch_size=100, lr=0.03,
                                                       progress=False, eval_samples=2))
    fitted[name] = model
    preds[name] = infer.predict(model, data.test.x, data.test.y, num_samples=T)
    res = metrics.classification_metrics(preds[name].mean, data.test.y)
    print(f"{name:14s} -ELBO/N {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}  "
          f"test accuracy {res['accuracy']:.3f}  NLL {res['nll']:.3f}")
    assert history[-1]["loss"] < history[0]["loss"]
    assert res["accuracy"] > 0.75

# %% [markdown]
# ## What each guide learned
#
# A point estimate has no spread between passes; the three Normal guides do. The mutual
# information between label and weights (epistemic uncertainty) is zero exactly for MAP.

# %%
for name, pred in preds.items():
    u = diagnostics.classification_uncertainty(pred.probs)
    print(f"{name:14s} mean mutual information {u['mutual_information'].mean():.4f}")
mi = {n: diagnostics.classification_uncertainty(p.probs)["mutual_information"].mean().item()
      for n, p in preds.items()}
assert mi["AutoDelta"] < 1e-6 and min(mi["mean-field"], mi["local-reparam"], mi["AutoNormal"]) > 1e-4

# %% [markdown]
# The autoguide's parameters live in Pyro's parameter store under the guide; pyrocg's
# mean-field guide keeps them in the model (so `torch.save(model)` saves them). Either way
# the weight sites are named like the network's parameters:

# %%
draw = fitted["AutoNormal"].sample_weights(data.test.x)
print(sorted(draw.values)[:4])
assert "hidden1.weight" in draw.values

# %% [markdown]
# ## `az.compare`
#
# Each model's `T` passes become ArviZ draws of the training log-likelihood
# (`to_inference_data`); `az.compare` estimates each model's expected log predictive density
# by PSIS-LOO and weights them by stacking. ArviZ's warnings (a point mass has infinite
# Pareto `k`; few draws make the threshold strict) are printed, not hidden.

# %%
idatas = {name: diagnostics.to_inference_data(m, data, chains=2, draws=T // 2) for name, m in fitted.items()}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    table = az.compare(idatas)
for message in {str(w.message).split(". ")[0] for w in caught if w.category is UserWarning}:
    print("ArviZ warned:", message)
print(table[["rank", "elpd_loo", "p_loo", "elpd_diff", "weight"]])
assert set(table.index) == set(guides)
assert abs(table["weight"].sum() - 1) < 1e-6
assert abs(table.loc["AutoDelta", "p_loo"]) < 1e-6  # a point estimate: no effective parameters
assert table["p_loo"].drop("AutoDelta").min() > 0

# %%
with warnings.catch_warnings():  # pandas deprecates an argument ArviZ 0.23 passes it
    warnings.filterwarnings("ignore", message="The inplace keyword")
    az.plot_compare(table, insample_dev=False)

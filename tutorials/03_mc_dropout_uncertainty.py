# %% [markdown]
# # 3. MC dropout as variational inference, read in ArviZ
#
# Dropout nodes kept random at test time make `T` forward passes into draws from an
# approximate posterior predictive (Gal & Ghahramani: dropout training is variational
# inference with a Bernoulli family). This tutorial trains the same MLP on scikit-learn's
# digits as a deterministic network and with MC dropout, and reads both in ArviZ:
# LOO, `az.compare`, a posterior predictive check, and out-of-distribution detection.

# %%
import os
import warnings

import matplotlib.pyplot as plt
import torch

from pyrocg import diagnostics, infer, metrics, models, modes
from pyrocg.data import load_digits
from pyrocg.diagnostics.arviz import import_arviz

az = import_arviz()  # arviz, without its 1.0 FutureWarning
QUICK = os.environ.get("PYROCG_QUICK") == "1"
EPOCHS, HIDDEN, T = (4, [64], 20) if QUICK else (30, [256, 256], 100)
data = load_digits(seed=0)
print(data)

# %% [markdown]
# ## Train both modes
#
# The network is the same chain graph; the mode object decides how it trains and predicts.
# `MCDropout` needs dropout nodes (it would refuse a network without them).

# %%
fitted = {}
for mode in (modes.FeedForward(), modes.MCDropout()):
    torch.manual_seed(0)
    net = models.mlp(64, HIDDEN, 10, dropout=0.3 if mode.uses_dropout else 0.0)
    model = infer.CGModel(net, infer.Categorical(len(data.train)), mode)
    infer.fit(model, data, infer.TrainConfig(epochs=EPOCHS, lr=3e-3, progress=False, eval_samples=5))
    fitted[mode.name] = model
    res = infer.evaluate(model, data.test.x, data.test.y, num_samples=T)
    print(f"{mode.name:12s} accuracy {res['accuracy']:.3f}  NLL {res['nll']:.3f}  ECE {res['ece']:.3f}")
    assert res["accuracy"] > 0.8

# %% [markdown]
# ## Uncertainty per datum
#
# The predictive entropy of the averaged passes splits into the expected entropy of each
# pass (aleatoric) and the mutual information between the label and the pass (epistemic,
# BALD). A deterministic network has one pass, hence zero mutual information.

# %%
preds = {name: infer.predict(m, data.test.x, data.test.y, num_samples=T) for name, m in fitted.items()}
for name, pred in preds.items():
    u = diagnostics.classification_uncertainty(pred.probs)
    assert torch.allclose(u["predictive_entropy"], u["expected_entropy"] + u["mutual_information"],
                          atol=1e-5)
    print(f"{name:12s} mean predictive entropy {u['predictive_entropy'].mean():.3f}, "
          f"mutual information {u['mutual_information'].mean():.4f}")
mi = {n: diagnostics.classification_uncertainty(p.probs)["mutual_information"] for n, p in preds.items()}
assert mi["feedforward"].abs().max() < 1e-5 and mi["mc-dropout"].mean() > 1e-3

# %% [markdown]
# ## LOO and `az.compare`
#
# `to_inference_data` lays the passes out as ArviZ draws (chains × draws passes on the
# training data). For the stochastic mode LOO reweights the passes; PSIS-LOO satisfies
# `elpd_loo + p_loo = lppd`, with `lppd = Σ_i log (1/S) Σ_s p(y_i | x_i, pass s)` — checked
# here by hand. With few draws ArviZ's Pareto-`k` threshold is strict (`1 - 1/log10(S)`), so it
# may warn about some data; the warnings are printed, not hidden.

# %%
def show_warnings(caught):
    for w in {str(w.message).split(". ")[0] for w in caught if w.category is UserWarning}:
        print("ArviZ warned:", w)


idatas = {name: diagnostics.to_inference_data(m, data, chains=2, draws=T // 2) for name, m in fitted.items()}
idata = idatas["mc-dropout"]
print(idata.groups())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loo = az.loo(idata, pointwise=True)
show_warnings(caught)
print("Pareto k > 0.7 for", int((loo.pareto_k > 0.7).sum()), "of", loo.n_data_points, "training data")
ll = torch.as_tensor(idata.log_likelihood["y"].values).flatten(0, 1)  # (S, n_train)
lppd = (torch.logsumexp(ll.double(), 0) - torch.log(torch.tensor(float(ll.shape[0])))).sum().item()
print(f"elpd_loo {loo.elpd_loo:.2f}, p_loo {loo.p_loo:.2f}, lppd {lppd:.2f}")
assert abs(loo.elpd_loo + loo.p_loo - lppd) < 1e-6 * abs(lppd) + 1e-6

# %% [markdown]
# `az.compare` ranks the two modes by their expected log predictive density. The
# deterministic network is a point mass repeated `S` times: ArviZ gives it `p_loo = 0` and
# warns that its Pareto `k` is infinite — expected for a point mass.

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    table = az.compare(idatas)
show_warnings(caught)
print(table[["rank", "elpd_loo", "p_loo", "weight"]])
assert set(table.index) == {"feedforward", "mc-dropout"}
assert abs(table["weight"].sum() - 1) < 1e-6
assert abs(table.loc["feedforward", "p_loo"]) < 1e-8

# %% [markdown]
# ## Posterior predictive check
#
# The `posterior_predictive` group holds labels drawn from each pass on the training
# inputs; their class frequencies should match the observed ones.

# %%
az.plot_ppc(idata, num_pp_samples=20)
y_rep = torch.as_tensor(idata.posterior_predictive["y"].values).flatten()
observed = torch.bincount(data.train.y, minlength=10).double() / len(data.train)
replicated = torch.bincount(y_rep, minlength=10).double() / y_rep.numel()
print("max |observed - replicated class frequency| =", round((observed - replicated).abs().max().item(), 4))
assert (observed - replicated).abs().max() < 0.05

# %% [markdown]
# ## Out-of-distribution inputs
#
# Uniform noise images should look unfamiliar. `ood_scores` gives each input a score
# (higher = more likely out of distribution) and `ood_metrics` the AUROC of separating the
# test digits from the noise with it.

# %%
torch.manual_seed(1)
noise_x = torch.rand(200, 64) * data.test.x.max()
rows = {}
for name, model in fitted.items():
    noise = infer.predict(model, noise_x, num_samples=T)
    scores = diagnostics.ood_metrics(diagnostics.ood_scores(preds[name].probs, preds[name].outputs),
                                     diagnostics.ood_scores(noise.probs, noise.outputs))
    rows[name] = {k: round(v["auroc"], 3) for k, v in scores.items()}
    print(f"{name:12s} AUROC", rows[name])
assert rows["mc-dropout"]["entropy"] > 0.75
assert metrics.auroc(torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0, 0, 1])) == 1.0  # out = positive

# %% [markdown]
# ## Reliability diagram
#
# Accuracy against confidence in the equal-width bins of the ECE
# (`diagnostics.reliability_curve`); a calibrated predictor sits on the diagonal.

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.plot([0, 1], [0, 1], color="0.6", ls=":")
for name, pred in preds.items():
    conf, acc, count = diagnostics.reliability_curve(pred.mean, data.test.y)
    keep = count >= 5
    ece = metrics.expected_calibration_error(pred.mean, data.test.y)
    ax.plot(conf[keep], acc[keep], "o-", label=f"{name} (ECE {ece:.3f})")
    assert torch.isclose(torch.as_tensor(ece, dtype=torch.float64),
                         ((count / count.sum()) * (acc - conf).abs()).nansum().double(), atol=1e-5)
ax.set_xlabel("confidence")
ax.set_ylabel("accuracy")
ax.legend()

# %% [markdown]
# # 7. A sigmoid belief net trained by exact enumeration
#
# With binary units a chain-graph layer is a layer of a *sigmoid belief net*: each hidden
# unit is a Bernoulli variable with probability `sigmoid(e)`. The feed-forward network
# passes on `E[h] = sigmoid(e)` — an approximation of the model. For a small layer Pyro can
# do better: **enumerate** the `2^H` joint configurations and sum them out, which gives the
# exact marginal likelihood `p(y | x) = Σ_h p(h | x) p(y | h)` — no sampling noise, no guide.
#
# This tutorial checks that Pyro's `TraceEnum_ELBO` on a pyrocg layer equals a brute-force
# sum written by hand, trains on it, and finds the exact MAP configuration of the hidden
# units with `infer_discrete`, checked against brute force too.

# %%
import itertools
import os
from collections import OrderedDict

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate

from pyrocg import handlers, layers
from pyrocg.infer.discrete import infer_discrete

QUICK = os.environ.get("PYROCG_QUICK") == "1"
STEPS = 60 if QUICK else 1500
torch.set_default_dtype(torch.float64)  # float64 so the brute-force comparison is tight
H = 4  # hidden units: 2**4 = 16 joint configurations


def make_sbn():
    return layers.Sequential(OrderedDict(
        hidden=layers.Dense(5, H, node="binary"),  # Bernoulli units, P(h_j = 1) = sigmoid(e_j)
        out=layers.Dense(H, 3, node=None)))        # class logits from the binary layer


# Data from a "true" sigmoid belief net with random weights.
torch.manual_seed(0)
truth = make_sbn()
with torch.no_grad():
    for p in truth.parameters():
        p.mul_(3.0)
x = torch.randn(600, 5)
with pyro.poutine.trace():
    y = dist.Categorical(logits=truth(x)).sample()  # ancestral sampling through h
x_train, y_train, x_test, y_test = x[:400], y[:400], x[400:], y[400:]
print("class counts:", torch.bincount(y, minlength=3).tolist())

# %% [markdown]
# ## The model and the exact marginal likelihood
#
# The model is the network plus an observed label site; `config_enumerate` marks the
# binary layer for parallel enumeration. With every latent site enumerated, the guide is
# empty and `TraceEnum_ELBO` *is* the negative log marginal likelihood.

# %%
def model_of(sbn):
    @config_enumerate
    def model(x, y=None):
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Categorical(logits=sbn(x)), obs=y)
    return model


def guide(x, y=None):
    pass


def brute_force_nll(sbn, x, y):
    """-Σ_i log Σ_h p(h | x_i) p(y_i | h), summing the 2**H configurations by hand."""
    q = torch.sigmoid(x @ sbn.hidden.weight.T + sbn.hidden.bias)          # (n, H)
    total = torch.zeros(len(x))
    for bits in itertools.product([0.0, 1.0], repeat=H):
        h = torch.tensor(bits)
        p_h = (q ** h * (1 - q) ** (1 - h)).prod(-1)                      # (n,)
        logits = h @ sbn.out.weight.T + sbn.out.bias
        total = total + p_h * torch.softmax(logits, -1)[y]
    return -total.log().sum()


torch.manual_seed(1)
sbn = make_sbn()
elbo = TraceEnum_ELBO(max_plate_nesting=1)
exact = elbo.loss(model_of(sbn), guide, x_train, y_train)
by_hand = brute_force_nll(sbn, x_train, y_train).item()
print(f"TraceEnum_ELBO {exact:.8f}   brute force {by_hand:.8f}")
assert abs(exact - by_hand) < 1e-8 * abs(by_hand)
assert elbo.loss(model_of(sbn), guide, x_train, y_train) == exact  # exact: no sampling noise

# %% [markdown]
# ## Train on the exact likelihood
#
# Pyro's `SVI` with the enumerated ELBO: each step's gradient is the exact gradient of
# the marginal log-likelihood.

# %%
pyro.clear_param_store()
svi = SVI(model_of(sbn), guide, pyro.optim.Adam({"lr": 0.1}), elbo)
before = brute_force_nll(sbn, x_test, y_test).item() / len(x_test)
losses = [svi.step(x_train, y_train) / len(x_train) for _ in range(STEPS)]
after = brute_force_nll(sbn, x_test, y_test).item() / len(x_test)
true_nll = brute_force_nll(truth, x_test, y_test).item() / len(x_test)
print(f"train NLL per datum {losses[0]:.3f} -> {losses[-1]:.3f}")
print(f"test NLL per datum: initial {before:.3f}, trained {after:.3f}, true model {true_nll:.3f}")
assert losses[-1] < losses[0] and after < before

# %% [markdown]
# The feed-forward network with the same weights replaces each binary unit by its mean
# `sigmoid(e)` — the deterministic approximation. Its likelihood is not the model's:

# %%
with handlers.feedforward():
    ff_logits = sbn(x_test)
ff_nll = torch.nn.functional.cross_entropy(ff_logits, y_test).item()
print(f"test NLL per datum: exact {after:.4f}, feed-forward approximation {ff_nll:.4f}")
assert abs(ff_nll - after) > 1e-4

# %% [markdown]
# ## The exact MAP configuration of the hidden units
#
# `infer_discrete(temperature=0)` runs Pyro's max-product pass over the enumerated sites
# and returns, per datum, the configuration maximising `p(h | x, y)`. Brute force agrees:

# %%
map_model = infer_discrete(model_of(sbn), first_available_dim=-2, temperature=0)
h_map = pyro.poutine.trace(map_model).get_trace(x_test, y_test).nodes["hidden"]["value"]

configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=H)))      # (16, H)
with torch.no_grad():
    q = torch.sigmoid(x_test @ sbn.hidden.weight.T + sbn.hidden.bias)       # (n, H)
    log_p_h = (configs[:, None] * q.log() + (1 - configs[:, None]) * (1 - q).log()).sum(-1)
    log_p_y = torch.log_softmax(configs @ sbn.out.weight.T + sbn.out.bias, -1)[:, y_test]
    best = configs[(log_p_h + log_p_y).argmax(0)]                           # (n, H)
agree = (h_map == best).all(-1).float().mean().item()
print(f"infer_discrete MAP = brute-force argmax for {agree:.0%} of the test data")
assert agree == 1.0
torch.set_default_dtype(torch.float32)

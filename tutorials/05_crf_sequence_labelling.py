# %% [markdown]
# # 5. Deep CRF sequence labelling
#
# Noisy digit images form sequences whose labels follow a Markov chain (mostly `d → d+1`).
# A CNN reads each image; a linear-chain CRF with learned transitions on top decodes the
# whole sequence. We compare it with the same CNN and independent outputs, and check that
# the learned transitions recover the grammar.

# %%
import os

import torch

from pyrocg import infer, layers, models, tasks

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
# The labels mostly go `d → d+1 (mod 10)`: the largest entry of row `d` of the learned
# transition matrix should be `d + 1`.

# %%
best_next = crf.transitions.argmax(-1)
print("argmax of each transition row:", best_next.tolist())
hits = (best_next == (torch.arange(10) + 1) % 10).sum().item()
assert hits >= 8

"""Tutorial 3 — a CRF output layer on top of a chain-graph network.

Noisy digit images form sequences whose labels follow a Markov chain (mostly d -> d+1).
A CNN reads each image; a linear-chain CRF with learned transitions on top decodes the
whole sequence. We compare it with the same CNN and independent outputs.
Run: ``python tutorials/03_deep_crfs.py`` (PYROCG_QUICK=1 for a fast run).
"""

import os

import torch

from pyrocg import infer, layers, models, tasks

quick = os.environ.get("PYROCG_QUICK") == "1"
data = tasks.digit_sequences(n_train=100 if quick else 600, n_test=50 if quick else 300)

for with_crf in (False, True):
    torch.manual_seed(0)
    cnn = models.cnn(1, 10, image_size=8, channels=(16, 32), hidden=64)
    crf = layers.ChainCRF(10, start_end=with_crf)
    if not with_crf:
        crf.transitions.requires_grad_(False)  # zero transitions = independent softmaxes
    # token_dims=3: the CNN sees one (1, 8, 8) image per position.
    model = infer.CGModel(cnn, infer.ChainCRFLikelihood(crf, len(data.train), token_dims=3))
    infer.fit(model, data, infer.TrainConfig(epochs=2 if quick else 15, batch_size=32, lr=3e-3,
                                             progress=False))
    res = infer.evaluate(model, data.test.x, data.test.y)
    print(f"{'chain CRF' if with_crf else 'independent':12s} token accuracy "
          f"{res['token_accuracy']:.3f}, whole-sequence accuracy {res['sequence_accuracy']:.3f}")

# The learned transition matrix recovers the grammar: the largest entry of row d is d + 1.
print("argmax of each transition row:", crf.transitions.argmax(-1).tolist())

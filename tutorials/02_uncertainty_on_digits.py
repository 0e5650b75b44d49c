"""Tutorial 2 — training in every mode and calibrated uncertainty on real digits.

Trains an MLP on scikit-learn's digits as a deterministic network, with PCFF, with dropout
and with MC dropout; compares test NLL and calibration; exports to ArviZ for LOO.
Run: ``python tutorials/02_uncertainty_on_digits.py`` (set PYROCG_QUICK=1 for a fast run).
"""

import os

import torch

from pyrocg import infer, models, modes
from pyrocg.data import load_digits
from pyrocg.diagnostics import to_inference_data

quick = os.environ.get("PYROCG_QUICK") == "1"
epochs = 2 if quick else 30
data = load_digits(seed=0)
n = len(data.train)

for mode in (modes.FeedForward(), modes.PCFF(0.3), modes.Dropout(), modes.MCDropout()):
    torch.manual_seed(0)
    # Dropout nodes only where the mode uses them (MCDropout refuses a net without).
    net = models.mlp(64, [256, 256], 10, dropout=0.2 if mode.uses_dropout else 0.0)
    model = infer.CGModel(net, infer.Categorical(n), mode)
    infer.fit(model, data, infer.TrainConfig(epochs=epochs, lr=1e-3, progress=False, eval_samples=10))
    res = infer.evaluate(model, data.test.x, data.test.y, num_samples=10 if quick else 100)
    print(f"{mode.name:12s} accuracy={res['accuracy']:.4f} nll={res['nll']:.4f} ece={res['ece']:.4f}")

# The last model is MC dropout: its T passes are draws for ArviZ.
pred = infer.predict(model, data.test.x, data.test.y, num_samples=40)
idata = to_inference_data(pred, data.test.y, chains=2)
print(idata.log_likelihood)

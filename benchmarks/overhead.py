"""pyrocg's per-step overhead over plain PyTorch doing the same computation, in every mode.

One optimiser step (loss, backward, Adam) of ``infer.CGModel`` against the identical
plain-PyTorch step, same weights, same data, timed interleaved in one run:

* ``uci``: Gal & Ghahramani's UCI regression net, 13-50-1, dropout 0.05 on the inputs and
  the hidden units, batch 128, Gaussian likelihood of fixed noise, weight decay;
* ``digits-mlp``: 64-512-512-10 (``pyrocg demo``'s network), batch 64;
* ``digits-cnn``: ``models.cnn`` on 8x8 images, batch 64;
* ``mlp`` and ``cnn``: the large 784-1024-1024-10 MLP (batch 256) and the 28x28 ``cnn``
  (batch 128), PCFF(0.3) against our own feed-forward step (PCFF has no plain twin);
* ``fit``: one whole ``infer.fit`` epoch (batching, progress bar off, validation) on digits
  against a plain loop over the same batches with the same validation pass.

Anchors: feed-forward → the plain network; dropout and MC dropout → the plain network with
``nn.Dropout`` in ``train()``; PCFF → the plain network with its ReLUs replaced by the same
PCFF draws written in PyTorch (``PlainPCFFReLU``); Bayesian weights → a plain
Bayes-by-backprop step (mean-field Normal weights, one draw, ``log q - log p`` plus the
likelihood), written with ``torch.func.functional_call``.

    python benchmarks/overhead.py [--threads 1 2] [--cases uci digits-mlp ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, print_table, time_interleaved, write_json  # noqa: E402

from pyrocg import infer, layers, models  # noqa: E402
from pyrocg.data import load_digits  # noqa: E402

POINT_MODES = ("feedforward", "pcff", "dropout", "mc-dropout")
WEIGHT_DECAY = 1e-4


# -- networks and their plain twins --------------------------------------------------------

def uci_net(dropout: float = 0.05):
    net = layers.Sequential(OrderedDict(
        drop0=layers.Dropout(dropout), hidden1=layers.Dense(13, 50),
        drop1=layers.Dropout(dropout), out=layers.Dense(50, 1, node=None)))
    plain = nn.Sequential(nn.Dropout(dropout), nn.Linear(13, 50), nn.ReLU(), nn.Dropout(dropout),
                          nn.Linear(50, 1))
    return net, plain


def mlp_net(sizes, dropout):
    net = models.mlp(sizes[0], sizes[1:-1], sizes[-1], dropout=dropout)
    mods, width = [], sizes[0]
    for i, h in enumerate(sizes[1:-1]):
        if dropout and i:
            mods.append(nn.Dropout(dropout))
        mods += [nn.Linear(width, h), nn.ReLU()]
        width = h
    if dropout:
        mods.append(nn.Dropout(dropout))
    mods.append(nn.Linear(width, sizes[-1]))
    return net, nn.Sequential(*mods)


def cnn_net(image_size, dropout):
    net = models.cnn(1, 10, image_size, dropout=dropout)
    drop = [nn.Dropout(dropout)] if dropout else []
    plain = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), *drop, nn.Linear(64 * (image_size // 4) ** 2, 128), nn.ReLU(),
        *[nn.Dropout(dropout) for _ in drop], nn.Linear(128, 10))
    return net, plain


class PlainPCFFReLU(nn.Module):
    """PCFF of ReLU nodes written in plain PyTorch: per element, with probability ``rate``
    a draw ``relu(e + |tanh e| eps)``, else ``relu(e)`` — the anchor of our PCFF mode."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, e):
        keep = (torch.rand_like(e) < self.rate).to(e.dtype)
        return F.relu(e + torch.tanh(e).abs() * torch.randn_like(e) * keep)


def with_pcff(plain: nn.Module, rate: float) -> nn.Module:
    """The plain twin with every ReLU replaced by its PCFF form (dropout off: PCFF
    marginalises dropout nodes)."""
    for name, child in plain.named_children():
        if isinstance(child, nn.ReLU):
            setattr(plain, name, PlainPCFFReLU(rate))
        else:
            with_pcff(child, rate)
    return plain


def copy_into_plain(net: nn.Module, plain: nn.Module) -> None:
    ours = [p for p in net.parameters()]
    theirs = [p for p in plain.parameters()]
    assert [p.shape for p in ours] == [p.shape for p in theirs], "twins differ"
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            b.copy_(a)


# -- steps ---------------------------------------------------------------------------------

def ours_step(model: infer.CGModel, x, y):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(x, y).backward()
        opt.step()

    return step


def nll(out, y, regression: bool):
    if regression:  # Gaussian of unit noise, as infer.Gaussian(scale=1, learn_scale=False)
        return 0.5 * (out[..., 0] - y).pow(2).mean() + 0.5 * math.log(2 * math.pi)
    return F.cross_entropy(out, y)


def plain_step(plain: nn.Module, x, y, regression: bool, dropout: bool):
    plain.train(dropout)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    weights = [p for n, p in plain.named_parameters() if n.endswith("weight")]

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nll(plain(x), y, regression)
        loss = loss + 0.5 * WEIGHT_DECAY * sum(w.pow(2).sum() for w in weights)
        loss.backward()
        opt.step()

    return step


def plain_bbb_step(plain: nn.Module, x, y, regression: bool, n: int, prior_scale=1.0):
    """Bayes-by-backprop: mean-field Normal weights, one draw per step, MC KL term."""
    plain.eval()  # no dropout: the weights are the random part
    names = [k for k, _ in plain.named_parameters()]
    locs = [p.detach().clone().requires_grad_() for p in plain.parameters()]
    rhos = [torch.full_like(p, math.log(math.expm1(0.01))).requires_grad_() for p in locs]
    opt = torch.optim.Adam(locs + rhos, lr=1e-3)
    prior = torch.distributions.Normal(0.0, prior_scale)

    def step():
        opt.zero_grad(set_to_none=True)
        kl = 0.0
        weights = {}
        for name, loc, rho in zip(names, locs, rhos, strict=True):
            q = torch.distributions.Normal(loc, F.softplus(rho))
            w = q.rsample()
            kl = kl + (q.log_prob(w) - prior.log_prob(w)).sum()
            weights[name] = w
        out = functional_call(plain, weights, (x,))
        (nll(out, y, regression) + kl / n).backward()
        opt.step()

    return step


def cg_model(net, regression: bool, mode: str, n: int):
    lik = infer.Gaussian(n, scale=1.0, learn_scale=False) if regression else infer.Categorical(n)
    if mode == "bayes":
        return infer.CGModel(net, lik, "bayes", prior=infer.GaussianPrior(1.0, biases=True))
    prior = infer.GaussianPrior.from_weight_decay(WEIGHT_DECAY, n)
    kwargs = {"rate": 0.3} if mode == "pcff" else {}
    return infer.CGModel(net, lik, mode, prior=prior, **kwargs)


# -- cases ---------------------------------------------------------------------------------

def mode_rows(case: str, build, x, y, regression: bool, n: int, modes, args):
    rows = []
    for mode in modes:
        dropout = mode in ("dropout", "mc-dropout")
        torch.manual_seed(0)
        net, plain = build(dropout)
        copy_into_plain(net, plain)
        model = cg_model(net, regression, mode, n)
        if mode == "bayes":
            anchor = plain_bbb_step(plain, x, y, regression, n)
            anchor_name = "plain Bayes-by-backprop"
        elif mode == "pcff":
            anchor = plain_step(with_pcff(plain, 0.3), x, y, regression, False)
            anchor_name = "plain PCFF (ReLU)"
        else:
            anchor = plain_step(plain, x, y, regression, dropout)
            anchor_name = "plain dropout" if dropout else "plain"
        t = time_interleaved({"ours": ours_step(model, x, y), "plain": anchor},
                             torch.device("cpu"), args.repeats, args.inner)
        rows.append({"case": case, "mode": mode, "anchor": anchor_name, "batch": x.shape[0],
                     "ours_ms": 1e3 * t["ours"], "anchor_ms": 1e3 * t["plain"],
                     "ratio": t["ours"] / t["plain"]})
        print(f"  {case:10s} {mode:12s} {rows[-1]['ratio']:.3f}", flush=True)
    return rows


def pcff_rows(case: str, build, x, y, args):
    torch.manual_seed(0)
    ff = cg_model(build(False)[0], False, "feedforward", 60000)
    pc = cg_model(build(False)[0], False, "pcff", 60000)
    t = time_interleaved({"pcff": ours_step(pc, x, y), "ff": ours_step(ff, x, y)},
                         torch.device("cpu"), args.repeats, max(2, args.inner // 4))
    print(f"  {case:10s} pcff/ff      {t['pcff'] / t['ff']:.3f}", flush=True)
    return [{"case": case, "mode": "pcff(0.3)", "anchor": "our feed-forward", "batch": x.shape[0],
             "ours_ms": 1e3 * t["pcff"], "anchor_ms": 1e3 * t["ff"], "ratio": t["pcff"] / t["ff"]}]


def fit_rows(args):
    data = load_digits(flatten=True, seed=0)
    torch.manual_seed(0)
    net, plain = mlp_net([64, 512, 512, 10], 0.0)
    copy_into_plain(net, plain)
    model = cg_model(net, False, "feedforward", len(data.train))
    config = infer.TrainConfig(epochs=1, batch_size=64, progress=False, log_epochs=False,
                               eval_samples=1)

    def ours():
        infer.fit(model, data, config)

    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    weights = [p for n, p in plain.named_parameters() if n.endswith("weight")]

    def loop():
        perm = torch.randperm(len(data.train))
        plain.train()
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(plain(data.train.x[idx]), data.train.y[idx])
            (loss + 0.5 * WEIGHT_DECAY * sum(w.pow(2).sum() for w in weights)).backward()
            opt.step()
        plain.eval()
        with torch.no_grad():
            probs = torch.softmax(plain(data.val.x), -1)
            float((probs.argmax(-1) == data.val.y).double().mean())

    # The loop's own cost: the same CGModel steps and validation, in a bare loop.
    torch.manual_seed(0)
    twin = cg_model(mlp_net([64, 512, 512, 10], 0.0)[0], False, "feedforward", len(data.train))
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-3)

    def bare():
        perm = torch.randperm(len(data.train))
        twin.train()
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            twin_opt.zero_grad(set_to_none=True)
            twin.loss(data.train.x[idx], data.train.y[idx]).backward()
            twin_opt.step()
        twin.eval()
        infer.evaluate(twin, data.val.x, data.val.y, 1)

    t = time_interleaved({"ours": ours, "plain": loop, "bare": bare}, torch.device("cpu"),
                         args.repeats, 1)
    print(f"  fit epoch  {t['ours'] / t['plain']:.3f} (loop alone {t['ours'] / t['bare']:.3f})",
          flush=True)
    return [{"case": "fit", "mode": "feedforward epoch", "anchor": "plain PyTorch loop",
             "batch": 64, "ours_ms": 1e3 * t["ours"], "anchor_ms": 1e3 * t["plain"],
             "ratio": t["ours"] / t["plain"]},
            {"case": "fit", "mode": "feedforward epoch", "anchor": "bare loop, same steps",
             "batch": 64, "ours_ms": 1e3 * t["ours"], "anchor_ms": 1e3 * t["bare"],
             "ratio": t["ours"] / t["bare"]}]


CASES = ("uci", "digits-mlp", "digits-cnn", "mlp", "cnn", "fit")


def run_cases(args) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    if "uci" in args.cases:
        x, y = torch.randn(128, 13, generator=g), torch.randn(128, generator=g)
        rows += mode_rows("uci", lambda d: uci_net(0.05 if d else 0.0), x, y, True, 500,
                          POINT_MODES + ("bayes",), args)
    if "digits-mlp" in args.cases:
        x, y = torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)
        rows += mode_rows("digits-mlp", lambda d: mlp_net([64, 512, 512, 10], 0.3 if d else 0.0),
                          x, y, False, 1258, POINT_MODES + ("bayes",), args)
    if "digits-cnn" in args.cases:
        x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
        rows += mode_rows("digits-cnn", lambda d: cnn_net(8, 0.3 if d else 0.0), x, y, False,
                          1258, POINT_MODES, args)
    if "mlp" in args.cases:
        x, y = torch.randn(256, 784, generator=g), torch.randint(0, 10, (256,), generator=g)
        rows += pcff_rows("mlp", lambda d: mlp_net([784, 1024, 1024, 10], 0.0), x, y, args)
    if "cnn" in args.cases:
        x, y = torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
        rows += pcff_rows("cnn", lambda d: cnn_net(28, 0.0), x, y, args)
    if "fit" in args.cases:
        rows += fit_rows(args)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"{machine(torch.device('cpu'))}, torch {torch.__version__}")
        rows = run_cases(args)
        print_table(rows, ["case", "mode", "anchor", "batch", "ours_ms", "anchor_ms", "ratio"])
        results[str(threads)] = rows
    write_json(args.json, {"benchmark": "overhead", "date": datetime.date.today().isoformat(),
                           "machine": machine(torch.device("cpu")), "results": results})


if __name__ == "__main__":
    main()

"""Latent nodes: amortised VI over hidden nodes (3) and neural HMMs (4) on a CPU or GPU.

(3) A sigmoid belief net on digits (mlp 64-H-10 of binary nodes) trained three ways with
the same weights' architecture: feed-forward (the sigmoid network), PCFF(0.5), and amortised
VI (inference network q(h|x,y), score-function TraceGraph_ELBO). Each is scored by its own
predictive (accuracy, NLL, ECE) and by the chain-graph marginal log-likelihood
``log p(y|x)`` of its weights read as a stochastic network, estimated by importance sampling
(proposal: the guide for the amortised model, the prior — ancestral draws — for all; K
samples, Monte-Carlo standard error of the mean).

(4) ChainHMM (pyrocg's chain DP) vs Pyro's DiscreteHMM on the same tensors: log-likelihood
evaluation time (forward, and forward + backward), ratio in the same run, and the largest
difference. Then the demo: noisy digit strings whose hidden writer state (upright / rotated
by 180 degrees) switches along the string; a NeuralHMM (emission network: a pyrocg mlp
giving label logits per state) is trained by maximum likelihood in SVI and decodes the
writer state by Viterbi, against per-step decisions that ignore the chain.

    python benchmarks/beyond_latent.py --quick --json latent.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, report, time_interleaved  # noqa: E402

from pyrocg import infer, models  # noqa: E402
from pyrocg.data import load_digits  # noqa: E402
from pyrocg.structured import ChainHMM, NeuralHMM  # noqa: E402

COLUMNS_3 = ["training", "accuracy", "nll", "ece", "cg_loglik", "cg_se", "proposal", "K",
             "ess", "train_s"]
COLUMNS_4 = ["batch", "T", "C", "chain_fwd_ms", "hmm_fwd_ms", "fwd_ratio", "chain_fb_ms",
             "hmm_fb_ms", "fb_ratio", "max_abs_diff"]


# -- (3) amortised VI ------------------------------------------------------------------------
def amortised(quick: bool, seed: int = 0) -> list[dict]:
    data = load_digits(seed=seed)
    n, hidden = len(data.train), 64
    epochs = 3 if quick else 40
    k = 100 if quick else 1000
    config = infer.TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, progress=False,
                               seed=seed, eval_samples=5)
    rows = []
    runs = [("feedforward", "feedforward"), ("pcff(0.5)", infer.PCFF(0.5)),
            ("amortised VI", None)]
    x, y = data.test.x, data.test.y
    for label, mode in runs:
        torch.manual_seed(seed)
        pyro.clear_param_store()
        net = models.mlp(64, [hidden], 10, node="binary")
        lik = infer.Categorical(n)
        model = (infer.AmortisedModel(net, lik) if mode is None
                 else infer.CGModel(net, lik, mode))
        t0 = time.perf_counter()
        infer.fit(model, data, config)
        train_s = time.perf_counter() - t0
        m = infer.evaluate(model, x, y, num_samples=100)
        proposals = ["guide", "prior"] if mode is None else ["prior"]
        for proposal in proposals:
            pyro.set_rng_seed(seed)
            est = infer.marginal_log_likelihood(model, x, y, num_samples=k, proposal=proposal)
            rows.append({
                "training": label, "accuracy": m["accuracy"], "nll": m["nll"], "ece": m["ece"],
                "cg_loglik": est.mean, "cg_se": est.mean_stderr, "proposal": proposal,
                "K": k, "ess": float(est.ess.mean()), "train_s": train_s,
            })
    return rows


# -- (4) neural HMM --------------------------------------------------------------------------
def hmm_timing(quick: bool) -> list[dict]:
    shapes = [(64, 50, 4), (64, 50, 16), (16, 200, 8)] if not quick else [(32, 30, 4)]
    rows = []
    for batch, steps, c in shapes:
        g = torch.Generator().manual_seed(0)
        init = torch.randn(batch, c, generator=g)
        trans = torch.randn(batch, steps, c, c, generator=g, requires_grad=True)
        loc = torch.randn(batch, steps, c, generator=g, requires_grad=True)
        x = torch.randn(batch, steps, generator=g)

        def ours(backward: bool, init=init, trans=trans, loc=loc, x=x):
            lp = ChainHMM(init, trans, dist.Normal(loc, 1.0)).log_prob(x).sum()
            if backward:
                lp.backward()
            return lp

        def theirs(backward: bool, init=init, trans=trans, loc=loc, x=x):
            lp = dist.DiscreteHMM(init, trans, dist.Normal(loc, 1.0)).log_prob(x).sum()
            if backward:
                lp.backward()
            return lp

        with torch.no_grad():
            diff = float((ChainHMM(init, trans, dist.Normal(loc, 1.0)).log_prob(x)
                          - dist.DiscreteHMM(init, trans, dist.Normal(loc, 1.0)).log_prob(x)
                          ).abs().max())
        cpu = torch.device("cpu")
        reps = (3, 3) if quick else (7, 10)
        with torch.no_grad():
            fwd = time_interleaved({"chain": lambda: ours(False), "hmm": lambda: theirs(False)},
                                   cpu, repeats=reps[0], inner=reps[1])
        fb = time_interleaved({"chain": lambda: ours(True), "hmm": lambda: theirs(True)}, cpu,
                              repeats=reps[0], inner=reps[1])
        rows.append({"batch": batch, "T": steps, "C": c,
                     "chain_fwd_ms": 1e3 * fwd["chain"], "hmm_fwd_ms": 1e3 * fwd["hmm"],
                     "fwd_ratio": fwd["hmm"] / fwd["chain"],
                     "chain_fb_ms": 1e3 * fb["chain"], "hmm_fb_ms": 1e3 * fb["hmm"],
                     "fb_ratio": fb["hmm"] / fb["chain"], "max_abs_diff": diff})
    return rows


def writer_strings(x: torch.Tensor, y: torch.Tensor, num: int, steps: int, switch: float,
                   noise: float, g: torch.Generator):
    """``num`` strings of ``steps`` digits; a hidden writer state (0 upright, 1 rotated by
    180 degrees) switches with probability ``switch`` per step; Gaussian pixel noise."""
    idx = torch.randint(0, x.shape[0], (num, steps), generator=g)
    state = torch.zeros(num, steps, dtype=torch.long)
    state[:, 0] = torch.randint(0, 2, (num,), generator=g)
    for t in range(1, steps):
        flip = torch.rand(num, generator=g) < switch
        state[:, t] = torch.where(flip, 1 - state[:, t - 1], state[:, t - 1])
    img = x[idx].reshape(num, steps, 8, 8)
    img = torch.where(state[..., None, None].bool(), img.flip(-1, -2), img)
    img = img + noise * torch.randn(img.shape, generator=g)
    return img.reshape(num, steps, 64), y[idx], state


def hmm_demo(quick: bool, seed: int = 0) -> dict:
    data = load_digits(seed=seed)
    g = torch.Generator().manual_seed(seed)
    steps, num_train, num_test = 12, (100 if quick else 400), 200
    u, y, _ = writer_strings(data.train.x, data.train.y, num_train, steps, 0.1, 0.3, g)
    u_te, y_te, z_te = writer_strings(data.test.x, data.test.y, num_test, steps, 0.1, 0.3, g)
    torch.manual_seed(seed)
    hmm = NeuralHMM(2, models.mlp(64, [64], 2 * 10))
    with torch.no_grad():  # break the symmetry of the two states' transitions
        hmm.transition_logits.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))

    def model(u, y):
        pyro.module("hmm", hmm)
        with pyro.plate("strings", u.shape[0], subsample_size=min(50, u.shape[0])) as i:
            pyro.sample("y", hmm(u[i]), obs=y[i])

    def guide(u, y):
        pass

    pyro.clear_param_store()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), pyro.infer.Trace_ELBO())
    t0 = time.perf_counter()
    for _ in range(60 if quick else 600):
        svi.step(u, y)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        d = hmm(u_te)
        loglik = float(d.log_prob(y_te).sum()) / (num_test * steps)
        same = float((dist.DiscreteHMM(d.initial_logits, d.transition_logits,
                                       d.observation_dist).log_prob(y_te)
                      - d.log_prob(y_te)).abs().max())
        _, path = d.viterbi(y_te)
        marg = d.posterior_marginals(y_te)
        # per-step decisions that ignore the chain: p(z_t | x_t, y_t), uniform prior
        obs = d.observation_dist.log_prob(y_te.unsqueeze(-1))  # (N, T, C)
        alone = obs.argmax(-1)

    def acc(pred):  # the states are learned up to a permutation
        a = float((pred == z_te).float().mean())
        return max(a, 1 - a)

    return {"strings_train": num_train, "strings_test": num_test, "T": steps,
            "test_loglik_per_step": loglik, "max_abs_diff_vs_DiscreteHMM": same,
            "writer_acc_viterbi": acc(path), "writer_acc_marginals": acc(marg.argmax(-1)),
            "writer_acc_per_step": acc(alone), "train_s": train_s}


def run(quick: bool) -> dict:
    """Both parts; returns ``{"amortised": rows, "hmm_timing": rows, "hmm_demo": dict}``."""
    torch.manual_seed(0)
    return {"amortised": amortised(quick), "hmm_timing": hmm_timing(quick),
            "hmm_demo": hmm_demo(quick)}


def goals(results: dict) -> list[str]:
    rows = {(r["training"], r["proposal"]): r for r in results["amortised"]}
    am, ff = rows[("amortised VI", "guide")], rows[("feedforward", "prior")]
    demo = results["hmm_demo"]
    timing = results["hmm_timing"]
    ratios = ", ".join(f"{r['fwd_ratio']:.2f}" for r in timing)
    return [
        f"(3) amortised VI's CG log-likelihood {am['cg_loglik']:.3f} ± {am['cg_se']:.3f} "
        f"(guide IS, K={am['K']}) vs the feed-forward-trained net read as a CG "
        f"{ff['cg_loglik']:.3f} ± {ff['cg_se']:.3f} (prior IS)",
        f"(4) ChainHMM vs DiscreteHMM log-likelihood: max |diff| "
        f"{max(r['max_abs_diff'] for r in timing):.2e}; forward speed ratio (DiscreteHMM / "
        f"ChainHMM) {ratios}",
        f"(4) writer-state decoding: Viterbi {demo['writer_acc_viterbi']:.3f} vs per-step "
        f"{demo['writer_acc_per_step']:.3f}",
    ]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = run(args.quick)
    print("(3) sigmoid belief net 64-64-10 on digits (test set, 359 images)")
    print_table(results["amortised"], COLUMNS_3)
    print("\n(4) log-likelihood evaluation, ChainHMM vs DiscreteHMM (ratio = DiscreteHMM / "
          "ChainHMM time)")
    print_table(results["hmm_timing"], COLUMNS_4)
    print("\n(4) neural HMM on noisy digit strings with a switching writer state")
    print_table([results["hmm_demo"]], list(results["hmm_demo"]))
    report("beyond_latent", goals(results), time.perf_counter() - t0, torch.device("cpu"),
           args, results)


if __name__ == "__main__":
    main()

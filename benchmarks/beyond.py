"""Beyond the anchors (issue 14): learned stochasticity and latent-variable models, one run.

* (1) learned PCFF / dropout / Gaussian-dropout rates against the best hand-tuned rate of a
  grid search chosen on validation, on digits and on the UCI-style regression protocol
  (:mod:`beyond_rates`): accuracy or RMSE, NLL and training time of each;
* (3) the importance-sampled test log-likelihood of amortised VI over the hidden nodes
  against feed-forward and PCFF training (:mod:`beyond_latent`);
* (4) the neural HMM's log-likelihood evaluation time against Pyro's ``DiscreteHMM``.

Goal: learned rates match or beat the grid search's NLL within one training run.

    python benchmarks/beyond.py [--quick] [--json out.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import beyond_latent  # noqa: E402
import beyond_rates  # noqa: E402
from _common import print_table, report  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a minutes-long smoke run")
    ap.add_argument("--json", default=None, help="write the results as JSON to this file")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rates = beyond_rates.run(args.quick, log=lambda m: print(m, flush=True))
    latent = beyond_latent.run(args.quick)
    print("\n(1) learned vs grid-searched rates")
    print_table(rates["rows"], beyond_rates.COLUMNS)
    print("\n(3) amortised VI over the hidden nodes (digits)")
    print_table(latent["amortised"], beyond_latent.COLUMNS_3)
    print("\n(4) log-likelihood evaluation, ChainHMM vs DiscreteHMM (ratio = DiscreteHMM / "
          "ChainHMM time)")
    print_table(latent["hmm_timing"], beyond_latent.COLUMNS_4)
    report("beyond", rates["goals"] + beyond_latent.goals(latent), time.perf_counter() - t0,
           torch.device("cpu"), args, {"rates": rates, "latent": latent})


if __name__ == "__main__":
    main()

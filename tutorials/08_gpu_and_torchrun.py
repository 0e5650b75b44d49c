# %% [markdown]
# # 8. GPU and `torchrun`
#
# pyrocg code is device-agnostic: move the model and the data, and every tensor pyrocg makes
# on the way — dropout masks, PCFF choices, node samples, weight draws — is created on their
# device. This tutorial
#
# 1. trains and predicts on the best device present, and checks that the result on a GPU
#    matches the CPU (skipped, and said so, where there is no GPU);
# 2. launches **two processes** with `torchrun` (gloo backend, on the CPU), trains one
#    data-parallel step, and checks that it equals one single-process step on the global
#    batch.

# %%
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

from pyrocg import handlers, infer, models, modes
from pyrocg.data import load_digits

QUICK = os.environ.get("PYROCG_QUICK") == "1"
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("device:", device, torch.cuda.get_device_name(0) if device.type == "cuda" else "")

# %% [markdown]
# ## One device
#
# `load_digits(device=...)` (or `data.to(device)`) and `model.to(device)` are all it takes.
# The `T` MC-dropout passes run as one batch on that device.

# %%
data = load_digits(seed=0, device=device)
torch.manual_seed(0)
model = infer.CGModel(models.mlp(64, [128], 10, dropout=0.2), infer.Categorical(len(data.train)),
                      modes.MCDropout()).to(device)
infer.fit(model, data, infer.TrainConfig(epochs=2 if QUICK else 10, lr=3e-3, progress=False))
pred = infer.predict(model, data.test.x, data.test.y, num_samples=50)
print(f"accuracy {infer.evaluate(model, data.test.x, data.test.y)['accuracy']:.3f}, "
      f"probs on {pred.probs.device}")
assert pred.probs.device.type == device.type and pred.probs.shape == (50, len(data.test), 10)

# %% [markdown]
# On a GPU, the same weights give the same deterministic predictions on both devices (up to
# floating-point reassociation):

# %%
if device.type == "cuda":
    cpu_net = models.mlp(64, [128], 10, dropout=0.2)
    cpu_net.load_state_dict({k: v.cpu() for k, v in model.net.state_dict().items()})
    with torch.no_grad(), handlers.feedforward():
        on_gpu = model.net(data.test.x).softmax(-1).cpu()
        on_cpu = cpu_net(data.test.x.cpu()).softmax(-1)
    print("max |GPU - CPU| of the feed-forward probabilities:", (on_gpu - on_cpu).abs().max().item())
    assert torch.allclose(on_gpu, on_cpu, atol=1e-4)
else:
    print("no GPU here: the CUDA comparison is skipped")

# %% [markdown]
# ## Two processes with `torchrun`
#
# `infer.fit` trains data-parallel when a process group is initialised: each global batch
# of `K × batch_size` rows is cut into `K` shards, and one all-reduce averages the
# gradients, so a step equals a single-process step on the global batch. The script below
# is what each process runs: join the group torchrun describes, train one epoch (one
# global batch), save the weights.

# %%
workdir = Path(tempfile.mkdtemp())
# The data and initialisation every process (and the single-process reference) uses.
(workdir / "toy.py").write_text(textwrap.dedent("""
    import torch
    from pyrocg import infer, models
    from pyrocg.data import DataSplits, Split

    BATCH = 8  # rows per process

    def toy_data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2 * BATCH, 6, generator=g)       # exactly one global batch
        y = torch.randint(0, 3, (2 * BATCH,), generator=g)
        empty = Split(x[:0], y[:0])
        return DataSplits(Split(x, y), empty, empty, "classification", "toy", (6,), num_classes=3)

    def toy_model():
        torch.manual_seed(7)
        return infer.CGModel(models.mlp(6, [10], 3), infer.Categorical(2 * BATCH))
"""))
script = workdir / "train_step.py"
script.write_text(textwrap.dedent(f"""
    import os, sys, torch
    sys.path.insert(0, {str(workdir)!r})
    from pyrocg import infer
    from pyrocg.infer import distributed
    from toy import BATCH, toy_data, toy_model

    distributed.init_from_env("cpu")                     # gloo on CPU; "cuda" gives NCCL
    model = toy_model()
    infer.fit(model, toy_data(), infer.TrainConfig(epochs=1, batch_size=BATCH, optimizer="sgd",
                                                   lr=0.5, progress=False))
    torch.save(model.state_dict(), os.path.join({str(workdir)!r}, f"rank{{distributed.rank()}}.pt"))
    torch.distributed.destroy_process_group()
"""))
sys.path.insert(0, str(workdir))
from toy import BATCH, toy_data, toy_model  # noqa: E402

env = {**os.environ, "OMP_NUM_THREADS": "1"}
run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      str(script)], env=env, capture_output=True, text=True, timeout=300)
print("torchrun exit status", run.returncode)
assert run.returncode == 0, run.stderr[-3000:]

# %% [markdown]
# Both processes end with the same weights, and they equal one single-process SGD step on
# the whole global batch (`2 × BATCH` rows):

# %%
rank0, rank1 = (torch.load(workdir / f"rank{r}.pt") for r in (0, 1))
single = toy_model()
infer.fit(single, toy_data(), infer.TrainConfig(epochs=1, batch_size=2 * BATCH, optimizer="sgd",
                                                lr=0.5, progress=False))
diffs = {k: (rank0[k] - v).abs().max().item() for k, v in single.state_dict().items()}
print(json.dumps({k: f"{v:.1e}" for k, v in diffs.items()}, indent=1))
assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
assert max(diffs.values()) < 1e-6

# %% [markdown]
# On a multi-GPU machine the same script with `init_from_env("cuda")` uses NCCL and one GPU
# per process (`cuda:LOCAL_RANK`); the command line does all of this with
# `torchrun --nproc_per_node K -m pyrocg.cli train ... --distributed`.

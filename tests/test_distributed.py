"""Data-parallel training with 2 CPU processes (gloo) equals single-process training."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyrocg import infer, models
from pyrocg.data import DataSplits, Split

BATCH = 8  # per process


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * BATCH, 6, generator=g)  # exactly one global batch
    y = torch.randint(0, 3, (2 * BATCH,), generator=g)
    empty = Split(x[:0], y[:0])
    return DataSplits(Split(x, y), empty, empty, "classification", "toy", (6,), num_classes=3)


def _model():
    torch.manual_seed(7)
    # No batch norm: its batch statistics are per shard (as in DDP without SyncBatchNorm).
    return infer.CGModel(models.mlp(6, [10], 3), infer.Categorical(2 * BATCH),
                         prior=infer.GaussianPrior(1.0))


def _config():
    return infer.TrainConfig(epochs=1, batch_size=BATCH, optimizer="sgd", lr=0.5, progress=False)


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = _model()
        if rank == 1:  # different local init: rank 0's weights must be broadcast
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        infer.fit(model, _data(), _config(), checkpoint=os.path.join(out_dir, "ck.pt"))
        torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform == "win32", reason="file:// rendezvous")
def test_two_process_step_equals_single_process_global_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    # Single process: the same one step on the whole global batch (2 x BATCH rows), whose
    # shuffled order is the same permutation the two processes shared.
    single = _model()
    data = _data()
    cfg = infer.TrainConfig(epochs=1, batch_size=2 * BATCH, optimizer="sgd", lr=0.5,
                            progress=False)
    infer.fit(single, data, cfg)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    ref = single.state_dict()
    for k, v in ref.items():
        assert torch.allclose(r0[k], v, atol=1e-6), k
        assert torch.equal(r0[k], r1[k]), k
    assert (tmp_path / "ck.pt").exists()

"""Two gloo processes on the CPU: DDP keeps the ranks' weights identical; rank 0 alone writes.

The device is explicit: on a GPU machine ``device="auto"`` would put the ranks on CUDA with NCCL
(one GPU per rank), which is not what this test is about.
"""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

from conftest import free_port, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

_WORKER = textwrap.dedent(
    """
    import io, sys, torch
    torch.set_num_threads(1)
    from fastpgd.trainer import train
    out_dir = sys.argv[1]
    rank = int(__import__("os").environ["RANK"])
    log = io.StringIO()
    result = train(dataset="synthetic", synthetic_size=60, image_size=8, batch_size=10,
                   epochs=1, max_steps=3, lr=1e-3, eps=0.1, alpha=0.05, attack_steps=2,
                   eval_steps=2, eval_restarts=1, quiet=True, report_every=3,
                   checkpoint=out_dir + "/ckpt.pt", out=log, device="cpu")
    torch.save([p.detach() for p in result.model.parameters()], f"{out_dir}/rank{rank}.pt")
    with open(f"{out_dir}/rank{rank}.log", "w") as f:
        f.write(log.getvalue())
    """
)


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    port = free_port()
    envs = [
        dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        for rank in range(2)
    ]  # fmt: skip
    run_ranks([[sys.executable, "-c", _WORKER, str(tmp_path)]] * 2, envs)

    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for a, b in zip(w0, w1, strict=True):
        assert torch.equal(a, b)

    # Rank 0 reports (with the across-ranks table) and checkpoints; rank 1 stays silent.
    log0 = (tmp_path / "rank0.log").read_text()
    assert "Timers across 2 ranks" in log0 and "2 processes" in log0 and "PGD" in log0
    assert (tmp_path / "rank1.log").read_text() == ""
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["attack_generators"]) == 2
    # Each rank draws its own random starts.
    assert not torch.equal(ckpt["attack_generators"][0], ckpt["attack_generators"][1])
    for a, b in zip(ckpt["model"].values(), w0, strict=True):
        assert torch.equal(a, b)
    leftovers = sorted(os.listdir(tmp_path))
    assert leftovers == ["ckpt.pt", "rank0.log", "rank0.pt", "rank1.log", "rank1.pt"]

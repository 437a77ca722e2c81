"""Timers.gather across two gloo processes on CPU.

Each rank records different, exactly known laps (fake clock), gathers, and
writes the result; the test checks min / mean / max across ranks exactly.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
import torch.distributed as dist

from conftest import free_port, run_ranks

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from fastpgd.timers import Timers

    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    now = [0]
    timers = Timers(clock=lambda: now[0])
    # rank r: (r + 1) steps; attack takes 100 * (r + 1) ns; only rank 1 runs "eval".
    for _ in range(rank + 1):
        with timers("step"):
            with timers("attack"):
                now[0] += 100 * (rank + 1)
            now[0] += 10
    if rank == 1:
        with timers("eval"):
            now[0] += 7
    gathered = timers.gather()
    subgroup = timers.gather(group=dist.new_group(ranks=list(range(world))))
    with open(out, "w") as f:
        json.dump({"default": gathered, "group": subgroup}, f)
    dist.barrier()
    dist.destroy_process_group()
    """
)


def test_gather_two_gloo_ranks(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(free_port())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run_ranks(
        [[sys.executable, str(script), str(rank), "2", port, str(tmp_path / f"rank{rank}.json")]
         for rank in range(2)],
        [env, env],
    )  # fmt: skip

    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # every rank gets the same answer, over the default group and an explicit one
    assert results[0] == results[1]
    assert results[0]["default"] == results[0]["group"]
    g = results[0]["default"]
    assert g["world_size"] == 2
    assert g["names"] == ["step", "attack", "eval"]
    assert g["parents"] == {"step": None, "attack": "step", "eval": None}

    attack = g["stats"]["attack"]
    assert attack["ranks"] == 2
    assert attack["count"] == {"min": 1, "mean": 1.5, "max": 2}
    # totals: rank 0 one lap of 100 ns, rank 1 two laps of 200 ns
    assert attack["total"] == {"min": 100e-9, "mean": 250e-9, "max": 400e-9}
    assert attack["mean"] == {"min": 100e-9, "mean": 150e-9, "max": 200e-9}
    assert [r["count"] for r in attack["per_rank"]] == [1, 2]

    step = g["stats"]["step"]
    assert step["total"]["min"] == pytest.approx(110e-9, rel=1e-15)
    assert step["total"]["max"] == pytest.approx(420e-9, rel=1e-15)

    evaluation = g["stats"]["eval"]
    assert evaluation["ranks"] == 1
    assert evaluation["count"] == {"min": 0, "mean": 0.5, "max": 1}
    assert evaluation["mean"]["min"] == evaluation["mean"]["max"] == pytest.approx(7e-9)

import random

import numpy as np
import torch

import fastpgd.trainer
from fastpgd import checkpoint


def _draws():
    return (torch.rand(3), random.random(), np.random.rand(3))


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    path = tmp_path / "rng.pt"
    checkpoint.atomic_save({"rng": checkpoint.rng_state()}, path)
    expected = _draws()
    _draws()  # move every generator on
    checkpoint.set_rng_state(torch.load(path, weights_only=True)["rng"])
    got = _draws()
    assert torch.equal(got[0], expected[0])
    assert got[1] == expected[1]
    assert np.array_equal(got[2], expected[2])


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    checkpoint.atomic_save({"v": 1}, path)
    checkpoint.atomic_save({"v": 2}, path)
    assert torch.load(path, weights_only=True) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_trainer_reexports_the_checkpoint_names():
    assert fastpgd.trainer.CheckpointError is checkpoint.CheckpointError
    assert fastpgd.trainer.load_checkpoint is checkpoint.load_checkpoint

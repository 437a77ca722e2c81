"""ReplayMemory: round trips per storage dtype within the stated error, fresh entries, resets,
checkpoints, and errors that name the argument."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, HAS_CUDA, needs_cuda
from fastpgd.replay import ReplayMemory

SHAPE = (1, 4, 4)
EPS = 0.3


def _deltas(n, eps=EPS, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand((n, *SHAPE), generator=g, dtype=torch.float64) * 2 - 1) * eps
    return d.to(dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float64])
def test_input_dtype_round_trip_is_exact(device, input_dtype):
    memory = ReplayMemory(20, SHAPE, eps=EPS, input_dtype=input_dtype, device=device)
    idx = torch.tensor([5, 0, 19, 7])
    delta = _deltas(4, dtype=input_dtype, device=device)
    memory.scatter(idx, delta)
    out = memory.gather(idx)
    assert out.dtype == input_dtype and out.device == torch.device(device)
    assert torch.equal(out, delta)
    # Another order of the same indices gathers the matching rows.
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(memory.gather(idx[perm]), delta[perm])
    assert memory.max_error == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_float16_error_is_within_relative_2_pow_minus_11(device):
    memory = ReplayMemory(64, SHAPE, eps=EPS, dtype="float16", device=device)
    idx = torch.arange(64)
    delta = _deltas(64, device=device, seed=1)
    memory.scatter(idx, delta)
    out = memory.gather(idx)
    assert out.dtype == torch.float32
    err = (out - delta).abs()
    bound = torch.clamp(delta.abs() * 2.0**-11, min=2.0**-25)
    assert (err <= bound).all()
    assert err.max() > 0  # it is lossy: the test would notice an exact (float32) store
    assert memory.nbytes == 64 * 16 * 2 + 64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eps", [0.3, 8 / 255, 2.5])
def test_int8_error_is_at_most_eps_over_254(device, eps):
    memory = ReplayMemory(200, SHAPE, eps=eps, dtype="int8", device=device)
    idx = torch.randperm(200)
    delta = _deltas(200, eps=eps, device=device, seed=2)
    # The ends of the range are stored exactly.
    delta[0].fill_(eps)
    delta[1].fill_(-eps)
    memory.scatter(idx, delta)
    out = memory.gather(idx)
    err = (out - delta).abs()
    assert err.max() <= eps / 254 * (1 + 1e-5)
    assert err.max() > eps / 254 * 0.9  # uniform data reaches the bound: a finer store would not
    assert torch.allclose(out[0], delta[0]) and torch.allclose(out[1], delta[1])
    assert memory.max_error == pytest.approx(eps / 254)
    assert memory.nbytes == 200 * 16 + 200
    # Outside [-eps, eps] int8 saturates at +-eps.
    memory.scatter(idx[:1], torch.full((1, *SHAPE), 3 * eps, device=device))
    assert torch.allclose(memory.gather(idx[:1]), torch.full((1, *SHAPE), eps, device=device))


def test_fresh_entries_gather_as_zeros_until_written():
    memory = ReplayMemory(10, SHAPE, eps=EPS)
    idx = torch.tensor([1, 2, 3])
    assert memory.fresh(idx).tolist() == [True, True, True]
    assert torch.equal(memory.gather(idx), torch.zeros(3, *SHAPE))
    memory.scatter(torch.tensor([2]), _deltas(1))
    assert memory.fresh(idx).tolist() == [True, False, True]
    got = memory.gather(idx)
    assert torch.equal(got[0], torch.zeros(SHAPE)) and torch.equal(got[2], torch.zeros(SHAPE))
    assert torch.equal(got[1], _deltas(1)[0])


def test_scatter_replaces_and_leaves_other_entries():
    memory = ReplayMemory(6, SHAPE, eps=EPS)
    memory.scatter(torch.arange(6), _deltas(6, seed=3))
    new = _deltas(2, seed=4)
    memory.scatter(torch.tensor([4, 1]), new)
    expected = _deltas(6, seed=3)
    expected[4], expected[1] = new[0], new[1]
    assert torch.equal(memory.gather(torch.arange(6)), expected)


def test_reset_every_k_epochs_and_idempotent_start():
    memory = ReplayMemory(4, SHAPE, eps=EPS, reset_every=2)
    idx = torch.arange(4)
    assert memory.start_epoch(0) is False
    memory.scatter(idx, _deltas(4))
    assert memory.start_epoch(1) is False
    assert not memory.fresh(idx).any()
    assert memory.start_epoch(2) is True
    assert memory.fresh(idx).all() and torch.equal(memory.gather(idx), torch.zeros(4, *SHAPE))
    memory.scatter(idx, _deltas(4))
    # Starting the same epoch again (a resumed run) keeps the entries.
    assert memory.start_epoch(2) is False
    assert not memory.fresh(idx).any()
    assert memory.start_epoch(3) is False and memory.start_epoch(4) is True
    assert memory.resets == 2
    never = ReplayMemory(4, SHAPE, eps=EPS)
    never.scatter(idx, _deltas(4))
    for epoch in range(6):
        assert never.start_epoch(epoch) is False
    assert not never.fresh(idx).any()


@pytest.mark.parametrize("dtype", ["input", "float16", "int8"])
def test_state_dict_round_trip(tmp_path, dtype):
    memory = ReplayMemory(8, SHAPE, eps=EPS, dtype=dtype, reset_every=3)
    memory.start_epoch(1)
    memory.scatter(torch.tensor([0, 5]), _deltas(2))
    torch.save(memory.state_dict(), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    other = ReplayMemory(8, SHAPE, eps=EPS, dtype=dtype, reset_every=3)
    other.load_state_dict(state)
    idx = torch.arange(8)
    assert torch.equal(other.gather(idx), memory.gather(idx))
    assert torch.equal(other.fresh(idx), memory.fresh(idx))
    assert other.epoch == 1 and other.start_epoch(1) is False
    with pytest.raises(ValueError, match="eps"):
        ReplayMemory(8, SHAPE, eps=0.1, dtype=dtype, reset_every=3).load_state_dict(state)
    with pytest.raises(ValueError, match="size"):
        ReplayMemory(9, SHAPE, eps=EPS, dtype=dtype, reset_every=3).load_state_dict(state)
    with pytest.raises(ValueError, match="storage_dtype"):
        other_dtype = "int8" if dtype != "int8" else "float16"
        ReplayMemory(8, SHAPE, eps=EPS, dtype=other_dtype, reset_every=3).load_state_dict(state)


def test_nbytes_per_dtype():
    n, per = 50, 16
    assert ReplayMemory(n, SHAPE, eps=EPS).nbytes == n * per * 4 + n
    assert ReplayMemory(n, SHAPE, eps=EPS, input_dtype=torch.float64).nbytes == n * per * 8 + n
    assert ReplayMemory(n, SHAPE, eps=EPS, dtype="float16").nbytes == n * per * 2 + n
    assert ReplayMemory(n, SHAPE, eps=EPS, dtype=torch.int8).nbytes == n * per + n


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(size=0), ValueError, "size"),
        (dict(size=2.0), TypeError, "size"),
        (dict(shape="1x4x4"), TypeError, "shape"),
        (dict(shape=(1, 0, 4)), ValueError, "shape"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps="0.3"), TypeError, "eps"),
        (dict(dtype="int4"), ValueError, "dtype"),
        (dict(dtype=torch.bfloat16), ValueError, "dtype"),
        (dict(dtype=3), TypeError, "dtype"),
        (dict(input_dtype=torch.int32), TypeError, "input_dtype"),
        (dict(location="disk"), ValueError, "location"),
        (dict(reset_every=-1), ValueError, "reset_every"),
        (dict(reset_every=1.5), TypeError, "reset_every"),
    ],
)
def test_constructor_errors_name_the_argument(kwargs, error, words):
    args = {"size": 10, "shape": SHAPE, "eps": EPS, **kwargs}
    with pytest.raises(error, match=words):
        ReplayMemory(args.pop("size"), args.pop("shape"), **args)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised without CUDA")
def test_pinned_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="pinned.*needs CUDA"):
        ReplayMemory(10, SHAPE, eps=EPS, location="pinned", device="cpu")


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["input", "int8"])
def test_pinned_round_trip(dtype):
    memory = ReplayMemory(30, SHAPE, eps=EPS, dtype=dtype, location="pinned", device="cuda")
    assert memory.data.is_pinned() and memory.data.device.type == "cpu"
    idx = torch.tensor([29, 3, 11])
    delta = _deltas(3, device="cuda")
    memory.scatter(idx, delta)
    out = memory.gather(idx)
    assert out.device.type == "cuda"
    assert (out - delta).abs().max() <= memory.max_error * (1 + 1e-5)


def test_index_and_delta_errors_name_the_argument():
    memory = ReplayMemory(10, SHAPE, eps=EPS)
    delta = _deltas(2)
    with pytest.raises(TypeError, match="indices must be a tensor"):
        memory.gather([1, 2])
    with pytest.raises(TypeError, match="indices must be an integer tensor"):
        memory.gather(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="indices must be 1-D"):
        memory.gather(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\)"):
        memory.gather(torch.tensor([3, 10]))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\)"):
        memory.scatter(torch.tensor([-1, 2]), delta)
    with pytest.raises(ValueError, match=r"indices must lie in"):
        memory.fresh(torch.tensor([11]))
    with pytest.raises(TypeError, match="delta must have dtype torch.float32"):
        memory.scatter(torch.tensor([1, 2]), delta.double())
    with pytest.raises(ValueError, match="delta must have shape"):
        memory.scatter(torch.tensor([1, 2, 3]), delta)
    with pytest.raises(ValueError, match="delta must have shape"):
        memory.scatter(torch.tensor([1, 2]), delta.reshape(2, 16))
    with pytest.raises(TypeError, match="delta must be a tensor"):
        memory.scatter(torch.tensor([1, 2]), delta.tolist())
    with pytest.raises(ValueError, match="distinct"):
        memory.scatter(torch.tensor([4, 4]), delta)
    assert memory.fresh(torch.arange(10)).all()  # nothing was written by the refused calls


def test_empty_batch_is_a_no_op():
    memory = ReplayMemory(5, SHAPE, eps=EPS)
    idx = torch.zeros(0, dtype=torch.int64)
    assert memory.gather(idx).shape == (0, *SHAPE)
    memory.scatter(idx, torch.zeros(0, *SHAPE))
    assert memory.fresh(torch.arange(5)).all()

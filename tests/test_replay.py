"""ReplayMemory: round trips per storage dtype within the stated error, fresh entries, resets,
checkpoints, and errors that name the argument."""

from __future__ import annotations

import math

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
    # torch.device("cuda") has no index; the memory's tensors live on cuda:0 (the current one).
    assert out.dtype == input_dtype and out.device == torch.empty(0, device=device).device
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


# ---------------------------------------------------------------------------------------------
# Bad deltas and bad states
# ---------------------------------------------------------------------------------------------


def _snapshot(memory):
    state = memory.state_dict()
    return state["data"], state["written"], state["epoch"], state["resets"]


def _same(a, b):
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["input", "float16", "int8"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_scatter_refuses_a_non_finite_delta_and_writes_nothing(device, dtype, bad):
    memory = ReplayMemory(6, SHAPE, eps=EPS, dtype=dtype, device=device)
    memory.scatter(torch.tensor([0, 1]), _deltas(2, device=device))
    before = _snapshot(memory)
    delta = _deltas(2, device=device, seed=1)
    delta[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match="delta must be finite, got NaN or inf"):
        memory.scatter(torch.tensor([1, 4]), delta)
    assert _same(_snapshot(memory), before)
    assert memory.fresh(torch.tensor([4])).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["input", "float16", "int8"])
def test_scatter_projects_each_element_onto_the_eps_box(device, dtype):
    memory = ReplayMemory(6, SHAPE, eps=EPS, dtype=dtype, device=device)
    idx = torch.tensor([3, 0, 5, 1])
    delta = _deltas(4, device=device, seed=2)
    delta[0] = 3 * EPS  # far outside: clamped to the faces of the box
    delta[1, 0, 1] = -5 * EPS
    delta[2, 0, 0, 0] = EPS * (1 + 1e-6)  # an Linf attack's x_adv - x, one rounding over
    l2 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)).to(device)
    delta[3] = l2 / l2.norm() * EPS  # on the L2 sphere of radius eps: inside the box already
    memory.scatter(idx, delta)
    out = memory.gather(idx)
    expected = delta.clamp(-EPS, EPS)
    assert not torch.equal(expected[:3], delta[:3]) and torch.equal(expected[3], delta[3])
    if dtype == "input":
        assert torch.equal(out, expected)
    else:
        assert (out - expected).abs().max() <= memory.max_error * (1 + 1e-5)
    assert out.abs().max() <= EPS * (1 + 2**-10)


def _valid_state():
    memory = ReplayMemory(8, SHAPE, eps=EPS, reset_every=3)
    memory.start_epoch(1)
    memory.scatter(torch.tensor([0, 5]), _deltas(2))
    return memory.state_dict()


def _with(**changes):
    def change(state):
        for key, value in changes.items():
            if value is _DROP:
                del state[key]
            else:
                state[key] = value(state) if callable(value) else value
        return state

    return change


_DROP = object()


def _nan_data(state):
    data = state["data"].clone()
    data[0, 0, 0, 0] = math.nan
    return data


def _fresh_row_written(state):
    data = state["data"].clone()
    data[3] = 0.1  # entry 3 was never written
    return data


@pytest.mark.parametrize(
    "change, error, words",
    [
        (_with(data=_DROP), ValueError, r"state is missing keys \['data'\]"),
        (_with(epoch=_DROP, resets=_DROP), ValueError, r"missing keys \['epoch', 'resets'\]"),
        (_with(size=9), ValueError, "state has size=9 but this memory has size=8"),
        (_with(size="8"), ValueError, "state has size='8'"),
        (_with(size=torch.tensor(8)), TypeError, r"state\['size'\] must be a plain int"),
        (_with(shape=[1, 4, 5]), ValueError, "state has shape=.1, 4, 5. but this memory"),
        (_with(data=lambda s: s["data"].tolist()), TypeError,
         r"state\['data'\] must be a tensor, got list"),
        (_with(data=lambda s: s["data"].double()), TypeError,
         r"state\['data'\] must have dtype torch.float32, got torch.float64"),
        (_with(data=lambda s: s["data"][:7]), ValueError,
         r"state\['data'\] must have shape \(8, 1, 4, 4\), got \(7, 1, 4, 4\)"),
        (_with(written=None), TypeError, r"state\['written'\] must be a tensor"),
        (_with(written=lambda s: s["written"].to(torch.uint8)), TypeError,
         r"state\['written'\] must have dtype torch.bool"),
        (_with(written=lambda s: s["written"][:, None]), ValueError,
         r"state\['written'\] must have shape \(8,\)"),
        (_with(epoch="1"), TypeError, r"state\['epoch'\] must be an int, got str"),
        (_with(epoch=-1), ValueError, r"state\['epoch'\] must be >= 0"),
        (_with(resets=1.0), TypeError, r"state\['resets'\] must be an int, got float"),
        (_with(data=_nan_data), ValueError, r"state\['data'\] must be finite"),
        (_with(data=_fresh_row_written), ValueError,
         r"non-zero entries that state\['written'\] marks fresh"),
    ],
)  # fmt: skip
def test_load_state_dict_refuses_a_bad_state_and_changes_nothing(change, error, words):
    memory = ReplayMemory(8, SHAPE, eps=EPS, reset_every=3)
    memory.start_epoch(2)
    memory.scatter(torch.tensor([1, 2, 7]), _deltas(3, seed=5))
    before = _snapshot(memory)
    with pytest.raises(error, match=words):
        memory.load_state_dict(change(_valid_state()))
    assert _same(_snapshot(memory), before)
    memory.load_state_dict(_valid_state())  # a good state still loads
    assert memory.epoch == 1 and memory.fresh(torch.arange(8)).tolist() == [
        False, True, True, True, True, False, True, True
    ]  # fmt: skip


def test_load_state_dict_accepts_a_tuple_shape_and_a_never_started_epoch():
    state = _valid_state()
    state["shape"], state["epoch"] = tuple(state["shape"]), None
    memory = ReplayMemory(8, SHAPE, eps=EPS, reset_every=3)
    memory.load_state_dict(state)
    assert memory.epoch is None and torch.equal(memory.data, state["data"])

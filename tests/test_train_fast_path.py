"""The trainer's fast path and its safeguards: CUDA graph modes (the captured step itself is in
test_captured_step.py), precision and determinism settings, batches on the device, augmentation, the
learning-rate schedule, output paths checked before the first step, and the command line's
one-line errors. CUDA cases run where a GPU exists."""

from __future__ import annotations

import io
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cuda
from fastpgd.checkpoint import CheckpointError
from fastpgd.data import ImageDataset, synthetic
from fastpgd.trainer import TrainConfig, Trainer, main
from fastpgd.trainer.batches import BatchSource, EpochOrder, augment_crop_flip
from fastpgd.trainer.loop import resolve_cuda_graph
from fastpgd.trainer.numerics import DeterminismError, process_settings, require_cublas_workspace

TINY = dict(
    dataset="synthetic", synthetic_size=50, image_size=8, batch_size=20, lr=1e-3, eps=0.1,
    alpha=0.05, attack_steps=2, eval_steps=2, eval_restarts=1, quiet=True, deterministic=True,
)  # fmt: skip


def _trainer(**kwargs) -> Trainer:
    return Trainer(TrainConfig(**{**TINY, **kwargs}), out=io.StringIO())


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


# -- CUDA graph modes -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["attack", "step"])
def test_graph_modes_need_cuda(mode):
    with pytest.raises(ValueError, match=f"cuda_graph='{mode}' needs a CUDA device"):
        _trainer(device="cpu", cuda_graph=mode)


def test_auto_graph_mode_is_eager_on_the_cpu():
    t = _trainer(device="cpu")
    assert (t.graph_mode, t.eval_graph, t.captured) == ("off", False, None)


@pytest.mark.parametrize(
    "kwargs, distributed, expected, words",
    [
        (dict(cuda_graph="auto"), False, ("attack", True), None),
        (dict(cuda_graph="off"), False, ("off", False), None),
        (dict(cuda_graph="step"), False, ("step", True), None),
        (dict(cuda_graph="step", replay=True), False, ("attack", True), "--method replay"),
        (dict(cuda_graph="step", amp="fp16"), False, ("attack", True), "gradient scaler"),
        (dict(cuda_graph="step"), True, ("attack", True), "DDP"),
        (dict(cuda_graph="step", free_replays=2), False, ("off", True), "free training"),
        (dict(cuda_graph="auto", free_replays=2), False, ("off", True), None),
    ],
)
def test_graph_mode_falls_back_where_it_cannot_capture(kwargs, distributed, expected, words):
    config = TrainConfig(**{**TINY, **kwargs}).resolved()
    training, evaluation, note = resolve_cuda_graph(config, torch.device("cuda"), distributed)
    assert (training, evaluation) == expected
    if words is None:
        assert note is None
    else:
        assert words in note and "cannot capture" in note


# -- precision and determinism ----------------------------------------------------------------


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains(amp, tmp_path):
    ckpt = tmp_path / "amp.pt"
    t = _trainer(max_steps=3, amp=amp, checkpoint=str(ckpt))
    result = t.fit(evaluate=False)
    assert result.steps == 3
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert (t.scaler is not None) == (amp == "fp16")
    state = torch.load(ckpt, weights_only=True)
    assert (state["scaler"] is not None) == (amp == "fp16")
    # Another precision is another trajectory: it does not continue this checkpoint.
    with pytest.raises(CheckpointError, match="amp="):
        _trainer(max_steps=4, checkpoint=str(ckpt), resume=True).fit()


@pytest.mark.parametrize("saved", [True, False])
def test_resume_refuses_another_determinism_mode(tmp_path, saved):
    ckpt = tmp_path / "run.pt"
    _trainer(max_steps=1, checkpoint=str(ckpt), deterministic=saved).fit(evaluate=False)
    before = ckpt.read_bytes()
    flag = "pass --deterministic" if saved else "drop --deterministic"
    with pytest.raises(CheckpointError, match=f"deterministic algorithms.*{flag}"):
        _trainer(max_steps=2, checkpoint=str(ckpt), resume=True, deterministic=not saved).fit()
    assert ckpt.read_bytes() == before


def test_process_settings_are_put_back():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cuda.matmul.allow_tf32)  # fmt: skip
    seen = {}
    with process_settings(deterministic=True, tf32=True, device=torch.device("cpu")):
        seen["det"] = torch.are_deterministic_algorithms_enabled()
        seen["tf32"] = torch.backends.cuda.matmul.allow_tf32
    assert seen == {"det": True, "tf32": True}
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32)  # fmt: skip
    assert after == before
    with pytest.raises(RuntimeError, match="boom"):
        with process_settings(deterministic=True, tf32=False, device=torch.device("cpu")):
            raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled() == before[0]


def test_cublas_workspace_is_set_before_cuda_starts(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    require_cublas_workspace(torch.device("cuda"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_cublas_workspace_too_late_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(DeterminismError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8.*unset"):
        require_cublas_workspace(torch.device("cuda"))
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the other accepted value
    require_cublas_workspace(torch.device("cuda"))
    require_cublas_workspace(torch.device("cpu"))  # nothing to do on the CPU


def test_channels_last_trains():
    t = _trainer(max_steps=2, channels_last=True)
    t.fit(evaluate=False)
    conv = t.model.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


# -- batches ----------------------------------------------------------------------------------


class _OwnFetch(ImageDataset):
    """A dataset that fetches batches its own way: the trainer must ask it, not index around it."""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x, y


def test_batches_on_the_device_equal_dataset_indexing():
    ds = ImageDataset((torch.arange(7 * 64) % 256).to(torch.uint8).view(7, 1, 8, 8),
                      torch.arange(7) % 3, scale=255.0, num_classes=3)  # fmt: skip
    order = EpochOrder(ds, batch_size=3, rank=0, world_size=1, seed=5)
    resident = BatchSource(ds, order, torch.device("cpu"))
    assert resident.resident and "indexed there" in resident.placement
    own = _OwnFetch(ds.images, ds.labels, ds.scale, ds.num_classes)
    asked = BatchSource(own, EpochOrder(own, 3, 0, 1, seed=5), torch.device("cpu"))
    assert not asked.resident
    for epoch, start in ((0, 0), (1, 1)):
        got = list(resident.epoch(epoch, start))
        want = list(asked.epoch(epoch, start))
        assert len(got) == len(want) == 3 - start
        for (x, y, i), (xw, yw, iw) in zip(got, want, strict=True):
            assert torch.equal(x, xw) and torch.equal(y, yw) and torch.equal(i, iw)
            assert torch.equal(x, ds[i.tolist()][0]) and x.dtype == torch.float32


def test_crop_and_flip_match_a_slow_reference():
    x = torch.rand(6, 3, 5, 7)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    out = augment_crop_flip(x, gen)
    # The same draws, applied one image at a time.
    gen.set_state(state)
    n, p = x.shape[0], 4
    dy = torch.randint(0, 2 * p + 1, (n, 1), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n, 1), generator=gen)
    flip = torch.rand((n, 1), generator=gen) < 0.5
    for i in range(n):
        padded = F.pad(x[i], (p, p, p, p))
        crop = padded[:, dy[i, 0] : dy[i, 0] + 5, dx[i, 0] : dx[i, 0] + 7]
        if flip[i, 0]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop), i
    assert flip.any() and not flip.all()  # both cases were exercised


def test_augmentation_is_part_of_the_trajectory(tmp_path):
    plain = _trainer(max_steps=3)
    plain.fit(evaluate=False)
    aug = _trainer(max_steps=3, augment=True)
    aug.fit(evaluate=False)
    assert not torch.equal(_params(plain.model)[0], _params(aug.model)[0])
    # Resume continues the augmentation stream exactly.
    ckpt = tmp_path / "aug.pt"
    _trainer(max_steps=2, augment=True, checkpoint=str(ckpt)).fit(evaluate=False)
    resumed = _trainer(max_steps=3, augment=True, checkpoint=str(ckpt), resume=True)
    resumed.fit(evaluate=False)
    for a, b in zip(_params(aug.model), _params(resumed.model), strict=True):
        assert torch.equal(a, b)


# -- learning-rate schedule -------------------------------------------------------------------


def test_piecewise_schedule_divides_by_ten_at_half_and_three_quarters():
    t = _trainer(epochs=4, lr_schedule="piecewise", lr=0.1)  # 3 batches x 4 epochs = 12 steps
    assert t.total_steps() == 12
    lrs = [t.lr_at(s) for s in range(12)]
    assert lrs[:6] == [0.1] * 6
    assert lrs[6:9] == pytest.approx([0.01] * 3) and lrs[9:] == pytest.approx([0.001] * 3)
    t.fit(evaluate=False)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    constant = _trainer(epochs=4, lr=0.1)
    assert {constant.lr_at(s) for s in range(12)} == {0.1}


def test_sgd_optimizer_settings():
    t = _trainer(optimizer="sgd", weight_decay=5e-4, max_steps=1)
    group = t.optimizer.param_groups[0]
    assert isinstance(t.optimizer, torch.optim.SGD)
    assert (group["momentum"], group["weight_decay"]) == (0.9, 5e-4)
    t.fit(evaluate=False)


# -- failing early and clearly ----------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("timing_json", "dir", "is a directory"),
        ("plot", "dir", "is a directory"),
        ("timing_json", "/proc/version", "cannot be written"),
        ("timing_json", "missing/laps.json", "does not exist"),
        ("checkpoint", "missing/run.pt", "does not exist"),
    ],
)
def test_output_paths_are_checked_before_the_first_step(tmp_path, field, value, words):
    path = str(tmp_path) if value == "dir" else value
    if value.startswith("missing"):
        path = str(tmp_path / value)
    t = _trainer(max_steps=2, **{field: path})
    with pytest.raises(ValueError, match=f"{field}.*{words}"):
        t.fit()
    assert t.step == 0 and t.timers.names() == []


def test_output_path_check_leaves_no_file_behind(tmp_path):
    t = _trainer(max_steps=1, timing_json=str(tmp_path / "laps.json"))
    t.check_outputs()
    assert os.listdir(tmp_path) == []


def test_stale_checkpoint_temporaries_are_removed(tmp_path):
    ckpt = tmp_path / "run.pt"
    ours = [tmp_path / ".run.pt.fastpgd-abc123.tmp", tmp_path / ".run.pt.fastpgd-x.tmp"]
    theirs = [tmp_path / ".run.pt.abc.tmp", tmp_path / ".other.pt.fastpgd-abc.tmp",
              tmp_path / "run.pt.fastpgd-abc.tmp"]  # fmt: skip
    for f in ours + theirs:
        f.write_bytes(b"partial checkpoint")
    _trainer(max_steps=1, checkpoint=str(ckpt)).fit(evaluate=False)
    assert not any(f.exists() for f in ours)
    assert all(f.exists() for f in theirs)
    # A temporary left by a killed save is gone on resume too, before any new save.
    ours[0].write_bytes(b"partial checkpoint")
    _trainer(max_steps=1, checkpoint=str(ckpt), resume=True).resume()
    assert not ours[0].exists()


def test_evaluate_restores_the_model_mode_on_errors():
    t = _trainer(max_steps=1)

    def broken(*args, **kwargs):
        raise RuntimeError("attack failed")

    t.attack_fn = broken
    for training in (True, False):
        t.model.train(training)
        with pytest.raises(RuntimeError, match="attack failed"):
            t.evaluate()
        assert t.model.training is training


def test_pixels_outside_the_unit_range_are_refused():
    bad = synthetic(20, image_size=8)
    bad.images[0, 0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"train_set pixels must lie in \[0, 1\]"):
        Trainer(TrainConfig(**TINY), train_set=bad, test_set=synthetic(10, image_size=8))


def _cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--device", "bogus"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'bogus'"),
        (["--cuda-graph", "step", "--device", "cpu"], "cuda_graph='step' needs a CUDA device"),
        (["--data-dir", "/tmp"], "data_dir does not apply to dataset 'digits'"),
        (["--timing-json", "/proc/version"], "timing_json '/proc/version' cannot be written"),
        (["--timing-json", "/"], "timing_json '/' is a directory"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(capsys, argv, words):
    code, err = _cli(capsys, "--max-steps", "1", "--quiet", *argv)
    assert code == 2
    assert err.startswith("fastpgd train: error: ") and words in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("sync", ["cuda", "events"])
def test_cli_gpu_timing_without_cuda_is_a_clear_error(capsys, sync):
    code, err = _cli(capsys, "--max-steps", "1", "--quiet", "--sync", sync)
    assert code == 2 and f"sync='{sync}' times work on a CUDA device" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "flag, value, need",
    [("--lr", "abc", "a positive number, got 'abc'"), ("--epochs", "1.5", "an integer >= 1"),
     ("--seed", "-1", "an integer >= 0"), ("--weight-decay", "-1", "a number >= 0")],
)  # fmt: skip
def test_cli_type_errors_name_the_flag_and_what_it_needs(capsys, flag, value, need):
    with pytest.raises(SystemExit) as exc:
        main([flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be {need}" in err


# -- on a GPU ---------------------------------------------------------------------------------


def _cuda_trainer(**kwargs) -> Trainer:
    return _trainer(device="cuda", **kwargs)


@needs_cuda
@pytest.mark.parametrize("mode", ["attack", "step"])
def test_cuda_training_step_does_not_wait_for_the_device(mode):
    t = _cuda_trainer(max_steps=6, cuda_graph=mode, deterministic=False)
    t.fit(evaluate=False)  # warm-up and capture happen here
    batches = t.batches.epoch(0)
    x, y, idx = next(batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            t._one_step(x, y, idx)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# -- the device of each process ---------------------------------------------------------------


@pytest.fixture
def one_gpu(monkeypatch):
    """What pick_device sees on a machine with one GPU (it only asks, and sets the current one)."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_each_rank_takes_the_gpu_of_its_local_rank(one_gpu):
    from fastpgd.trainer.distributed import Dist, pick_device

    assert pick_device("cuda", Dist()) == torch.device("cuda", 0)
    assert pick_device("auto", Dist(rank=0, world_size=2, local_rank=0)) == torch.device("cuda", 0)
    assert one_gpu == [torch.device("cuda", 0)] * 2
    with pytest.raises(ValueError, match="LOCAL_RANK=1 needs its own GPU, but this node has 1"):
        pick_device("cuda", Dist(rank=1, world_size=2, local_rank=1))
    with pytest.raises(ValueError, match="names one GPU, but 2 processes run"):
        pick_device("cuda:0", Dist(rank=0, world_size=2, local_rank=0))
    with pytest.raises(ValueError, match="this machine has 1 GPUs"):
        pick_device("cuda:3", Dist())
    assert pick_device("cpu", Dist(rank=1, world_size=2, local_rank=1)) == torch.device("cpu")


def test_the_backend_follows_the_device(monkeypatch):
    import torch.distributed as dist

    from fastpgd.trainer import distributed

    backends = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: backends.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    got = distributed.init_distributed("cpu")
    assert (got.rank, got.world_size, got.local_rank, got.created) == (1, 2, 1, True)
    distributed.init_distributed("auto")
    distributed.init_distributed("cuda:0")
    assert backends == ["gloo", "nccl", "nccl"]
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(ValueError, match="LOCAL_RANK must be an integer, got 'one'"):
        distributed.init_distributed("cpu")

"""The trainer: phases, checkpoints and exact resume, refusal of bad checkpoints, the CLI."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal

import pytest
import torch

from fastpgd import trainer as train_mod
from fastpgd.data import ImageDataset, synthetic
from fastpgd.trainer import CheckpointError, TrainConfig, Trainer, train

PHASES = {"step", "data", "setup", "attack", "forward", "backward", "update", "eval"}

# Small and quick: 60 synthetic 8x8 images in batches of 20 is 3 steps per epoch.
# Deterministic: on CUDA the bit-for-bit promises (seed, resume) hold only in that mode.
TINY = dict(
    dataset="synthetic", synthetic_size=60, image_size=8, batch_size=20, lr=1e-3, eps=0.1,
    alpha=0.05, attack_steps=2, eval_steps=2, eval_restarts=1, quiet=True, deterministic=True,
)  # fmt: skip


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for pa, pb in zip(a, b, strict=True):
        assert torch.equal(pa, pb)


def _run(**kwargs):
    out = io.StringIO()
    result = train(TrainConfig(**{**TINY, **kwargs}), out=out)
    return result, out.getvalue()


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(dataset="cifar"), ValueError, "dataset"),
        (dict(model="resnet50"), ValueError, "model"),
        (dict(optimizer="lbfgs"), ValueError, "optimizer"),
        (dict(lr_schedule="exponential"), ValueError, "lr_schedule"),
        (dict(cuda_graph="yes"), ValueError, "cuda_graph"),
        (dict(amp="fp8"), ValueError, "amp"),
        (dict(tf32=1), TypeError, "tf32"),
        (dict(deterministic="on"), TypeError, "deterministic"),
        (dict(augment="yes"), TypeError, "augment"),
        (dict(momentum=1.0, optimizer="sgd"), ValueError, "momentum must be < 1"),
        (dict(momentum=0.9), ValueError, "momentum applies to optimizer='sgd'"),
        (dict(weight_decay=-1e-4), ValueError, "weight_decay"),
        (dict(data_dir="/tmp"), ValueError, "data_dir does not apply to dataset 'digits'"),
        (dict(dataset="synthetic", data_dir="/tmp"), ValueError, "data_dir does not apply"),
        (dict(eps=-0.1), ValueError, "eps"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(alpha="0.1"), TypeError, "alpha"),
        (dict(epochs=1.5), TypeError, "epochs"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(attack="fgsm"), ValueError, "attack"),
        (dict(sync="always"), ValueError, "sync"),
        (dict(resume=True), ValueError, "checkpoint"),
        (dict(checkpoint_every=5), ValueError, "checkpoint"),
    ],
)
def test_config_errors_name_the_argument(kwargs, error, words):
    with pytest.raises(error, match=words):
        TrainConfig(**kwargs).resolved()


def test_dataset_defaults():
    mnist = TrainConfig(dataset="mnist").resolved()
    assert (mnist.batch_size, mnist.lr, mnist.eps, mnist.alpha, mnist.attack_steps) == (
        50, 1e-4, 0.3, 0.01, 40)  # fmt: skip
    assert mnist.eval_steps == 80 and mnist.eval_restarts == 3 and mnist.image_size == 28
    digits = TrainConfig().resolved()
    assert digits.dataset == "digits" and digits.image_size == 8
    assert digits.eval_steps == 2 * digits.attack_steps
    assert TrainConfig(dataset="digits", eps=0.2).resolved().eps == 0.2  # explicit wins


# -- one run --------------------------------------------------------------------------------


def test_phases_are_timed_and_reported(tmp_path):
    result, text = _run(epochs=2, timing_json=str(tmp_path / "t.json"))
    timers = result.timers
    assert PHASES <= set(timers.names())
    assert result.steps == 6
    for phase in PHASES - {"eval"}:
        assert len(timers.laps(phase)) == 6, phase
    assert len(timers.laps("eval")) == 1
    # The phases lie inside the step.
    step = sum(timers.laps("step"))
    inner = sum(sum(timers.laps(p)) for p in PHASES - {"step", "eval"})
    assert 0 < inner <= step
    laps = json.loads((tmp_path / "t.json").read_text())
    assert "step" in json.dumps(laps) and "attack" in json.dumps(laps)
    for words in ("attack", "step", "clean", "PGD", "adversarial training (fused)"):
        assert words in text
    assert 0.0 <= result.pgd_acc <= 1.0 and 0.0 <= result.clean_acc <= 1.0


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    _run(max_steps=2, plot=str(tmp_path / "phases.png"))
    assert (tmp_path / "phases.png").stat().st_size > 0


def test_natural_training_has_no_attack_phase():
    result, text = _run(attack="none", epochs=1)
    assert "attack" not in result.timers.names()
    assert "natural training" in text


def test_report_every_prints_tables():
    _, text = _run(epochs=2, report_every=2)
    assert text.count("-- step") == 3  # steps 2, 4, 6


def test_compare_natural_reports_both():
    result, text = _run(epochs=1, compare_natural=True)
    assert result.natural is not None and result.natural.steps == result.steps
    assert "attack" not in result.natural.timers.names()
    assert "natural training (attack none)" in text and "adversarial training" in text


def test_training_learns_and_pgd_lowers_accuracy():
    # A few epochs of natural training separate the synthetic classes; a large eps breaks them.
    result, _ = _run(attack="none", synthetic_size=300, epochs=4, eps=0.5, alpha=0.1, eval_steps=5)
    assert result.clean_acc >= 0.8
    assert result.pgd_acc < result.clean_acc


def test_seed_determines_weights():
    a, _ = _run(max_steps=2)
    b, _ = _run(max_steps=2)
    c, _ = _run(max_steps=2, seed=1)
    _assert_same_weights(_params(a.model), _params(b.model))
    assert not torch.equal(next(a.model.parameters()), next(c.model.parameters()))


def test_fused_and_reference_train_alike():
    # The Linf step equals the reference bit for bit, so with deterministic algorithms the two
    # attacks train the same weights.
    fused, _ = _run(max_steps=3, attack="fused")
    ref, _ = _run(max_steps=3, attack="reference")
    _assert_same_weights(_params(fused.model), _params(ref.model))


# -- checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("split", [2, 4], ids=["mid-epoch", "next-epoch"])
def test_resume_gives_the_same_weights(tmp_path, split):
    straight, _ = _run(max_steps=7, epochs=3, eval_every=1)
    ckpt = tmp_path / "run.pt"
    first, _ = _run(max_steps=split, epochs=3, eval_every=1, checkpoint=str(ckpt))
    assert first.steps == split and ckpt.is_file()
    resumed, _ = _run(max_steps=7, epochs=3, eval_every=1, checkpoint=str(ckpt), resume=True)
    assert resumed.steps == 7
    _assert_same_weights(_params(straight.model), _params(resumed.model))
    # The laps of the first part travel in the checkpoint.
    assert len(resumed.timers.laps("step")) == 7
    # Every evaluation of the straight run happened in the two parts too, with equal results
    # (the first part adds its own final one).
    parts = {h["step"]: h for h in resumed.history}
    for h in straight.history:
        assert parts[h["step"]] == h
    assert resumed.pgd_acc == straight.pgd_acc and resumed.clean_acc == straight.clean_acc


def test_checkpoint_contents_load_weights_only(tmp_path):
    ckpt = tmp_path / "c.pt"
    _run(max_steps=2, checkpoint=str(ckpt), checkpoint_every=1)
    state = torch.load(ckpt, weights_only=True)
    assert state["format"] == "fastpgd-train-checkpoint" and state["step"] == 2
    assert {"model", "optimizer", "rng", "attack_generators", "timers", "config",
            "data_order", "epoch", "position"} <= set(state)  # fmt: skip
    assert set(state["rng"]) == {"torch", "cuda", "python", "numpy"}
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


class _SignalAt(ImageDataset):
    """Sends a signal to this process while the given batch is fetched."""

    def __init__(self, base: ImageDataset, at: int, signum: int):
        super().__init__(base.images, base.labels, base.scale, base.num_classes, base.name)
        self.fetches, self.at, self.signum = 0, at, signum

    def __getitem__(self, index):
        if isinstance(index, list):
            self.fetches += 1
            if self.fetches == self.at:
                os.kill(os.getpid(), self.signum)
        return super().__getitem__(index)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_a_checkpoint_that_resumes_exactly(tmp_path, signum):
    straight, _ = _run(max_steps=5, epochs=2)
    ckpt = tmp_path / "run.pt"
    config = TrainConfig(**{**TINY, "max_steps": 5, "epochs": 2, "checkpoint": str(ckpt)})
    base = Trainer(config, out=io.StringIO())
    handler_before = signal.getsignal(signum)
    trainer = Trainer(config, train_set=_SignalAt(base.train_set, at=3, signum=signum),
                      test_set=base.test_set, out=io.StringIO())  # fmt: skip
    result = trainer.fit()
    assert result.interrupted and result.steps == 3
    assert signal.getsignal(signum) == handler_before  # the handler is restored
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    resumed, _ = _run(max_steps=5, epochs=2, checkpoint=str(ckpt), resume=True)
    _assert_same_weights(_params(straight.model), _params(resumed.model))


def _refused(ckpt, words, **kwargs):
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match=words):
        _run(max_steps=2, checkpoint=str(ckpt), resume=True, **kwargs)
    assert ckpt.read_bytes() == before  # never overwritten


@pytest.fixture
def good_checkpoint(tmp_path):
    ckpt = tmp_path / "good.pt"
    _run(max_steps=1, checkpoint=str(ckpt))
    return ckpt


def test_truncated_checkpoint_is_refused(good_checkpoint):
    data = good_checkpoint.read_bytes()
    good_checkpoint.write_bytes(data[: len(data) // 2])
    _refused(good_checkpoint, "unreadable")


def test_garbage_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "garbage.pt"
    ckpt.write_bytes(b"not a checkpoint at all")
    _refused(ckpt, "unreadable")


def test_foreign_format_and_version_are_refused(tmp_path, good_checkpoint):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    _refused(other, "not a fastpgd training checkpoint")
    state = torch.load(good_checkpoint, weights_only=True)
    state["version"] = 99
    torch.save(state, good_checkpoint)
    _refused(good_checkpoint, "version 99")


def test_pickled_objects_are_refused(tmp_path):
    ckpt = tmp_path / "pickle.pt"
    torch.save({"format": "fastpgd-train-checkpoint", "x": argparse.Namespace(a=1)}, ckpt)
    _refused(ckpt, "unreadable")


def test_checkpoint_of_another_run_is_refused(good_checkpoint):
    _refused(good_checkpoint, "image_size=8", image_size=12)  # another model shape
    _refused(good_checkpoint, "batch_size", batch_size=10)
    _refused(good_checkpoint, "dataset", dataset="digits", epochs=1)


def test_existing_checkpoint_is_not_overwritten_without_resume(good_checkpoint):
    before = good_checkpoint.read_bytes()
    with pytest.raises(ValueError, match="already exists"):
        _run(max_steps=1, checkpoint=str(good_checkpoint))
    assert good_checkpoint.read_bytes() == before


def test_missing_checkpoint_on_resume(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run(max_steps=1, checkpoint=str(tmp_path / "none.pt"), resume=True)


# -- command line ---------------------------------------------------------------------------


def test_add_parser_registers_train(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="fastpgd")
    sub = parser.add_subparsers(dest="command", required=True)
    train_mod.add_parser(sub)
    args = parser.parse_args(["train", "--dataset", "synthetic", "--synthetic-size", "40",
                              "--image-size", "8", "--batch-size", "20", "--epochs", "1",
                              "--attack-steps", "1", "--eval-steps", "1", "--eval-restarts", "1",
                              "--attack", "reference", "--quiet",
                              "--timing-json", str(tmp_path / "laps.json")])  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "adversarial training (reference)" in out and "PGD" in out
    assert (tmp_path / "laps.json").is_file()


def test_cli_rejects_bad_values(capsys):
    with pytest.raises(SystemExit):
        train_mod.main(["--eps", "-1"])
    assert "--eps" in capsys.readouterr().err
    assert train_mod.main(["--resume"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_digits_default_run_smoke():
    # The default dataset end to end, shortened.
    out = io.StringIO()
    result = train(
        dataset="digits",
        max_steps=2,
        attack_steps=2,
        eval_limit=40,
        eval_steps=2,
        eval_restarts=1,
        quiet=True,
        out=out,
    )
    assert result.steps == 2 and result.config.image_size == 8
    assert "digits test split at eps 0.2" in out.getvalue()


def test_trainer_rejects_wrong_types():
    with pytest.raises(TypeError, match="config"):
        Trainer({"dataset": "digits"})
    with pytest.raises(TypeError, match="train_set"):
        Trainer(TrainConfig(**TINY), train_set=[1, 2, 3])
    with pytest.raises(ValueError, match="image shapes differ"):
        Trainer(TrainConfig(**TINY), train_set=synthetic(10, image_size=8),
                test_set=synthetic(10, image_size=12))  # fmt: skip


# -- attacking less: replay memory and free adversarial training ----------------------------


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(replay=True, free_replays=2), ValueError, "exclude"),
        (dict(replay=True, attack="none"), ValueError, "replay needs an attack"),
        (dict(free_replays=3, attack="none"), ValueError, "free_replays needs an attack"),
        (dict(free_replays=0), ValueError, "free_replays"),
        (dict(replay=True, replay_steps=0), ValueError, "replay_steps"),
        (dict(replay_reset=-1), ValueError, "replay_reset"),
        (dict(replay_dtype="int4"), ValueError, "replay_dtype"),
        (dict(replay="yes"), TypeError, "replay"),
    ],
)
def test_replay_config_errors_name_the_argument(kwargs, error, words):
    with pytest.raises(error, match=words):
        TrainConfig(**kwargs).resolved()


def test_replay_steps_default():
    assert TrainConfig(replay=True).resolved().replay_steps == 2  # digits: ceil(7 / 4)
    assert TrainConfig(dataset="mnist", replay=True).resolved().replay_steps == 10


def test_replay_warm_starts_after_the_first_epoch():
    result, text = _run(epochs=3, replay=True, replay_steps=1)
    timers = result.timers
    # Epoch 1 is all fresh (full attack, nothing to gather); epochs 2 and 3 gather.
    assert len(timers.laps("memory_gather")) == 9  # the fresh flags are read every step
    assert len(timers.laps("memory_scatter")) == 9
    assert timers.parents()["memory_gather"] == "step"
    assert timers.parents()["memory_scatter"] == "step"
    assert "replay memory: 60 x [1, 8, 8] torch.float32" in text
    assert f"{60 * 64 * 4 + 60:,} bytes" in text
    assert "memory_gather" in text and "memory_scatter" in text
    assert "adversarial training (fused, replay 1 steps)" in text


def test_replay_changes_training_and_reset_every_epoch_is_plain_pgd():
    plain, _ = _run(epochs=2)
    replay, _ = _run(epochs=2, replay=True, replay_steps=2)
    # The warm start moves the second epoch's adversarial examples, so the weights.
    assert not torch.equal(next(plain.model.parameters()), next(replay.model.parameters()))
    # Forgetting at every epoch never warm-starts: the same draws as plain PGD.
    reset, _ = _run(epochs=2, replay=True, replay_steps=2, replay_reset=1)
    _assert_same_weights(_params(plain.model), _params(reset.model))


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_replay_compressed_memory_trains(dtype):
    result, text = _run(epochs=2, replay=True, replay_dtype=dtype)
    assert result.steps == 6 and len(result.timers.laps("memory_scatter")) == 6
    size = {"float16": 2, "int8": 1}[dtype]
    assert f"{60 * 64 * size + 60:,} bytes" in text


def test_replay_checkpoint_is_refused_without_replay(tmp_path):
    ckpt = tmp_path / "r.pt"
    _run(max_steps=1, checkpoint=str(ckpt), replay=True)
    _refused(ckpt, "replay=True")
    _refused(ckpt, "replay_dtype", replay=True, replay_dtype="int8")


def test_free_replays_train_each_batch_m_times():
    result, text = _run(epochs=6, free_replays=3)
    # ceil(6 / 3) = 2 passes of 3 batches; each batch 3 forward/backward/update and 3 steps
    # of the perturbation.
    assert result.steps == 6
    for phase in ("forward", "backward", "update", "attack"):
        assert len(result.timers.laps(phase)) == 18, phase
    assert "free adversarial training (fused, m=3)" in text
    assert "each batch 3 times, 2 passes" in text


def test_free_perturbation_stays_in_the_eps_box():
    config = TrainConfig(**{**TINY, "epochs": 2, "free_replays": 2})
    trainer = Trainer(config, out=io.StringIO())
    trainer.fit()
    delta = trainer.method.delta
    assert delta.abs().max() <= config.eps + 1e-6
    assert delta.abs().max() > 0.5 * config.eps  # signed steps of eps reach the box's faces


def test_cli_replay_options(capsys):
    code = train_mod.main(["--dataset", "synthetic", "--synthetic-size", "40", "--image-size", "8",
                           "--batch-size", "20", "--epochs", "2", "--attack-steps", "2",
                           "--eval-steps", "1", "--eval-restarts", "1", "--quiet", "--replay",
                           "--replay-steps", "1", "--replay-reset", "3",
                           "--replay-dtype", "float16"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "torch.float16" in out and "reset every 3 epochs" in out
    with pytest.raises(SystemExit):
        train_mod.main(["--free-replays", "0"])
    assert "--free-replays" in capsys.readouterr().err

"""The methods in the trainer: every method trains on digits, resume is exact for every method with
a memory and with the weight average, bad combinations are one-line errors, the schedules, the
weight average and the catastrophic-overfitting guard."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from fastpgd.trainer import CheckpointError, TrainConfig, Trainer, main, train
from fastpgd.trainer.config import METHODS
from fastpgd.trainer.ema import WeightAverage
from fastpgd.trainer.guard import CollapseGuard, is_collapse
from fastpgd.trainer.loop import GUARD_SEED_OFFSET, resolve_cuda_graph
from fastpgd.trainer.schedules import onecycle_lr

# 60 synthetic 8x8 images in batches of 20: 3 steps per epoch. Deterministic, as in test_train.
TINY = dict(
    dataset="synthetic", synthetic_size=60, image_size=8, batch_size=20, lr=1e-3, eps=0.1,
    alpha=0.05, attack_steps=2, eval_steps=2, eval_restarts=1, eval_limit=40, quiet=True,
    deterministic=True,
)  # fmt: skip


def _run(**kwargs):
    out = io.StringIO()
    result = train(TrainConfig(**{**TINY, **kwargs}), out=out)
    return result, out.getvalue()


def _params(model):
    return [t.detach().clone() for t in (*model.parameters(), *model.buffers())]


def _assert_same(a, b):
    assert len(a) == len(b)
    for ta, tb in zip(a, b, strict=True):
        assert torch.equal(ta, tb)


# -- every method -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_a_few_steps_on_digits(method):
    out = io.StringIO()
    result = train(dataset="digits", method=method, epochs=1, max_steps=3, eval_limit=40,
                   eval_steps=2, eval_restarts=1, quiet=True, out=out)  # fmt: skip
    assert result.steps == 3 and result.config.method == method
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    # (After 3 steps PGD accuracy need not lie below clean accuracy: an attack on a nearly
    # random model can turn a wrong prediction right.)
    assert 0.0 <= result.pgd_acc <= 1.0 and 0.0 <= result.clean_acc <= 1.0
    text = out.getvalue()
    assert f"method {method};" in text
    if method != "pgd":
        assert method in text.splitlines()[-1]  # the result line names it


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_under_bf16_channels_last_and_augmentation(method):
    config = TrainConfig(**TINY, method=method, max_steps=2, amp="bf16", channels_last=True,
                         augment=True, ema=0.9)  # fmt: skip
    trainer = Trainer(config, out=io.StringIO())
    result = trainer.fit(evaluate=False)
    assert result.steps == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="pgi", pgi_reset=2),
        dict(method="pgi", augment=True),
        dict(method="replay", replay_steps=1, augment=True),
        dict(method="free", free_replays=2),
        dict(method="fgsm-rs", ema=0.9, label_smoothing=0.2, lr_schedule="cosine"),
        dict(method="pgd", ema=0.9, lr_schedule="onecycle"),
    ],
    ids=["pgi-reset", "pgi-augment", "replay-augment", "free", "fgsm-rs-ema", "pgd-ema"],
)
def test_resume_is_exact(tmp_path, kwargs):
    epochs = 6 if kwargs["method"] == "free" else 3  # free: ceil(6 / 2) = 3 passes
    straight, _ = _run(max_steps=8, epochs=epochs, **kwargs)
    ckpt = tmp_path / "run.pt"
    first, _ = _run(max_steps=4, epochs=epochs, checkpoint=str(ckpt), **kwargs)
    assert first.steps == 4
    state = torch.load(ckpt, weights_only=True)
    assert (state["method"] is None) == (kwargs["method"] not in ("pgi", "replay", "free"))
    resumed, _ = _run(max_steps=8, epochs=epochs, checkpoint=str(ckpt), resume=True, **kwargs)
    assert resumed.steps == 8
    _assert_same(_params(straight.model), _params(resumed.model))
    assert resumed.pgd_acc == straight.pgd_acc and resumed.clean_acc == straight.clean_acc


def test_a_checkpoint_of_another_method_is_refused(tmp_path):
    ckpt = tmp_path / "pgi.pt"
    _run(max_steps=1, method="pgi", checkpoint=str(ckpt))
    with pytest.raises(CheckpointError, match="method='pgi' \\(this run: 'n-fgsm'\\)"):
        _run(max_steps=2, method="n-fgsm", checkpoint=str(ckpt), resume=True)


def test_a_checkpoint_without_method_implies_it_from_replay(tmp_path):
    # Checkpoints written before --method carried replay=True and the memory under its own key.
    ckpt = tmp_path / "old.pt"
    _run(max_steps=2, epochs=2, method="replay", checkpoint=str(ckpt))
    state = torch.load(ckpt, weights_only=True)
    del state["config"]["method"]
    state["replay_memory"] = state.pop("method")["memory"]
    torch.save(state, ckpt)
    resumed, _ = _run(max_steps=4, epochs=2, replay=True, checkpoint=str(ckpt), resume=True)
    straight, _ = _run(max_steps=4, epochs=2, replay=True)
    _assert_same(_params(straight.model), _params(resumed.model))


# -- bad combinations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(method="sgd"), ValueError, "method must be one of pgd, fgsm-rs"),
        (dict(method="pgd", replay=True), ValueError, "replay=True is method='replay'"),
        (dict(method="pgi", free_replays=3), ValueError, "free_replays (--free-replays) applies"),
        (dict(fgsm_step=2.0), ValueError, "fgsm_step (--fgsm-step) applies to method fgsm-rs"),
        (dict(method="trades", pgi_lambda=1.0), ValueError, "pgi_lambda (--pgi-lambda)"),
        (dict(method="pgi", trades_beta=1.0), ValueError, "trades_beta"),
        (dict(method="pgd", replay_steps=2), ValueError, "replay_steps"),
        (dict(method="n-fgsm", attack="none"), ValueError, "method='n-fgsm' needs an attack"),
        (dict(method="fgsm-rs", fgsm_step=0.0), ValueError, "fgsm_step"),
        (dict(method="pgi", pgi_momentum=1.0), ValueError, "pgi_momentum must be < 1"),
        (dict(label_smoothing=1.0), ValueError, "label_smoothing must be in [0, 1)"),
        (dict(ema=1.0), ValueError, "ema must be a decay in (0, 1)"),
        (dict(ema=0.0), ValueError, "ema"),
        (dict(ema="0.9"), TypeError, "ema"),
        (dict(on_collapse="restore"), ValueError, "on_collapse='restore' needs the guard"),
        (dict(on_collapse="halt", guard=10), ValueError, "on_collapse must be one of"),
        (dict(guard=-1), ValueError, "guard"),
    ],
)
def test_config_errors_name_the_setting(kwargs, error, words):
    with pytest.raises(error, match=words.replace("(", "\\(").replace(")", "\\)")
                       .replace("[", "\\[")):  # fmt: skip
        TrainConfig(**kwargs).resolved()


def test_defaults_per_method():
    c = TrainConfig(method="fgsm-rs").resolved()
    assert (c.fgsm_step, c.fgsm_noise, c.guard) == (1.25, 1.0, 256)
    c = TrainConfig(method="n-fgsm").resolved()
    assert (c.fgsm_step, c.fgsm_noise) == (1.0, 2.0)
    c = TrainConfig(method="pgi").resolved()
    assert (c.pgi_momentum, c.pgi_lambda, c.pgi_reset, c.fgsm_step) == (0.3, 10.0, 40, 1.0)
    assert TrainConfig(method="trades").resolved().trades_beta == 6.0
    assert TrainConfig(method="free").resolved().free_replays == 4
    c = TrainConfig().resolved()
    assert (c.method, c.guard, c.fgsm_step, c.free_replays) == ("pgd", 0, None, 1)
    # The aliases; resolving twice changes nothing.
    assert TrainConfig(replay=True).resolved().method == "replay"
    c = TrainConfig(free_replays=3).resolved()
    assert (c.method, c.free_replays) == ("free", 3)
    assert c.resolved() == c


def _cli(capsys, *argv):
    code = main(["--quiet", "--max-steps", "1", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--method", "pgd", "--replay"], "replay=True is method='replay'"),
        (["--method", "replay", "--free-replays", "2"], "applies to method free"),
        (["--fgsm-step", "2"], "fgsm_step (--fgsm-step) applies to method"),
        (["--on-collapse", "stop"], "on_collapse='stop' needs the guard"),
        (["--ema", "1.5"], "ema must be a decay in (0, 1)"),
        (["--label-smoothing", "1"], "label_smoothing must be in [0, 1)"),
    ],
)
def test_cli_bad_combinations_are_one_line_errors(capsys, argv, words):
    code, err = _cli(capsys, *argv)
    assert code == 2
    assert err.startswith("fastpgd train: error: ") and words in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_aliases_and_method_flags(capsys):
    code = main(["--dataset", "synthetic", "--synthetic-size", "40", "--image-size", "8",
                 "--batch-size", "20", "--epochs", "2", "--eval-steps", "1", "--eval-restarts",
                 "1", "--quiet", "--free-replays", "2", "--ema", "0.9", "--label-smoothing",
                 "0.1", "--lr-schedule", "cosine"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "method free; lr schedule cosine; label smoothing 0.1; weight average" in out
    assert "free adversarial training (fused, m=2)" in out


def test_cuda_graph_falls_back_for_each_method():
    def resolve(**kwargs):
        config = TrainConfig(**{**TINY, **kwargs}).resolved()
        return resolve_cuda_graph(config, torch.device("cuda"), False)

    assert resolve(method="trades", cuda_graph="step")[:2] == ("attack", True)
    assert "trades" in resolve(method="trades", cuda_graph="step")[2]
    training, evaluation, note = resolve(method="pgi", cuda_graph="attack")
    assert (training, evaluation) == ("off", True) and "no separate attack" in note
    training, _, note = resolve(method="pgd", cuda_graph="step", lr_schedule="cosine")
    assert training == "attack" and "changes at every step" in note
    assert resolve(method="fgsm-rs", cuda_graph="auto") == ("attack", True, None)


# -- the schedules ----------------------------------------------------------------------------


def test_cosine_and_onecycle_schedules():
    config = TrainConfig(**{**TINY, "epochs": 4, "lr_schedule": "cosine", "lr": 0.1})
    t = Trainer(config, out=io.StringIO())
    lrs = [t.lr_at(s) for s in range(12)]
    assert lrs[0] == 0.1 and lrs[6] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    # onecycle: torch's OneCycleLR, step by step.
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50,
                                                cycle_momentum=False)  # fmt: skip
    for step in range(50):
        assert onecycle_lr(0.1, step, 50) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


# -- the weight average -----------------------------------------------------------------------


def test_weight_average_of_weights_and_batchnorm_buffers():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = WeightAverage(model, decay=0.9)
    start = [t.clone() for t in ema.module.state_dict().values()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(8, 3))  # moves the running statistics and num_batches_tracked
    for n in (1, 2):
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        for a, (key, w), s in zip(ema.module.state_dict().values(), model.state_dict().items(),
                                  start, strict=True):  # fmt: skip
            if key.endswith("num_batches_tracked"):
                assert torch.equal(a, w)  # integers are copied
            else:
                torch.testing.assert_close(a, d * s + (1 - d) * w)
        start = [t.clone() for t in ema.module.state_dict().values()]
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_the_weight_average_is_what_is_evaluated_and_checkpointed(tmp_path):
    ckpt = tmp_path / "ema.pt"
    config = TrainConfig(**TINY, max_steps=3, ema=0.5, checkpoint=str(ckpt))
    trainer = Trainer(config, out=io.StringIO())
    result = trainer.fit()
    assert result.model is trainer.ema.module and trainer.ema.updates == 3
    assert not torch.equal(trainer.model[0].weight if isinstance(trainer.model, nn.Sequential)
                           else next(trainer.model.parameters()),
                           next(trainer.ema.module.parameters()))  # fmt: skip
    state = torch.load(ckpt, weights_only=True)
    for key, value in trainer.ema.module.state_dict().items():
        assert torch.equal(state["model"][key], value)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(state["ema"]["train_model"][key], value)
    assert result.pgd_acc == trainer.evaluate()["pgd_acc"]


# -- the catastrophic-overfitting guard -------------------------------------------------------


def test_collapse_is_a_large_relative_and_absolute_drop():
    assert is_collapse(0.0, 0.3) and is_collapse(0.14, 0.3)
    assert not is_collapse(0.16, 0.3)  # above half of the best
    assert not is_collapse(0.01, 0.08)  # a drop of less than 10 points
    guard = CollapseGuard("report")
    assert guard.observe(1, 10, 0.9, 0.4) is None
    assert guard.observe(2, 20, 0.9, 0.3) is None and guard.best == 0.4
    found = guard.observe(3, 30, 0.95, 0.05)
    assert found["best_epoch"] == 1 and found["pgd_acc"] == 0.05 and not guard.halted
    assert guard.observe(4, 40, 0.95, 0.01) is None  # only the first collapse is reported
    assert CollapseGuard("stop").halted is False


class _FakeAccuracy:
    """Replaces the guard's measurement with a scripted PGD accuracy per epoch."""

    def __init__(self, trainer, pgd_by_epoch):
        self.trainer, self.pgd = trainer, pgd_by_epoch
        self.real = trainer._count_correct

    def __call__(self, model, dataset, indices, **kwargs):
        if kwargs["timer"] != "guard":
            return self.real(model, dataset, indices, **kwargs)
        n = len(indices)
        pgd = self.pgd[self.trainer.epoch]
        return torch.tensor([0.9 * n, pgd * n, n], dtype=torch.float64)


@pytest.mark.parametrize("action", ["report", "stop", "restore"])
def test_guard_actions(tmp_path, action):
    ckpt = tmp_path / "g.pt"
    config = TrainConfig(**TINY, epochs=5, guard=20, on_collapse=action, checkpoint=str(ckpt))
    trainer = Trainer(config, out=(out := io.StringIO()))
    trainer._count_correct = _FakeAccuracy(trainer, {1: 0.3, 2: 0.4, 3: 0.05, 4: 0.5, 5: 0.5})
    snapshots = {}
    real_check = trainer._check_guard

    def check():
        snapshots[trainer.epoch] = _params(trainer.model)
        real_check()

    trainer._check_guard = check
    result = trainer.fit()
    line = [x for x in out.getvalue().splitlines() if "catastrophic overfitting" in x]
    assert len(line) == 1 and "epoch 3 (step 9)" in line[0] and "best 40.0% (epoch 2)" in line[0]
    assert result.collapse["epoch"] == 3 and result.collapse["action"] == action
    if action == "report":
        assert result.steps == 15
        return
    assert result.steps == 9  # stopped at the collapse
    expected = snapshots[2] if action == "restore" else snapshots[3]
    _assert_same(expected, _params(trainer.model))
    # A resumed run stays stopped.
    again = Trainer(TrainConfig(**{**config.__dict__, "resume": True}), out=io.StringIO())
    assert again.fit().steps == 9


@pytest.fixture
def one_thread():
    """One torch thread: a collapse is a chaotic event, and the reduction order of a
    multi-threaded convolution changes where (and whether) this one happens."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_guard_catches_a_provoked_collapse_on_digits(one_thread):
    # FGSM-RS with twice its step (2 eps instead of 1.25 eps, the regime in which Wong et al. see
    # catastrophic overfitting) and a large SGD learning rate: on this seed PGD accuracy on the
    # guard slice falls from 25% after epoch 1 to 9% after epoch 2 while clean accuracy holds
    # (about 52%). The guard reports it and restores epoch 1.
    config = TrainConfig(dataset="digits", method="fgsm-rs", fgsm_step=2.0, optimizer="sgd",
                         lr=0.2, seed=1, epochs=6, guard=128, on_collapse="restore",
                         eval_limit=60, eval_steps=2, eval_restarts=1, quiet=True)  # fmt: skip
    trainer = Trainer(config, out=(out := io.StringIO()))
    result = trainer.fit()
    collapse = result.collapse
    assert collapse is not None, trainer.guard.history
    assert collapse["pgd_acc"] < 0.5 * collapse["best_pgd_acc"]
    assert collapse["clean_acc"] > 0.3  # the clean accuracy held: not a diverged network
    assert "catastrophic overfitting at epoch" in out.getvalue()
    per_epoch = trainer.order.batches_per_epoch
    assert result.steps == collapse["epoch"] * per_epoch < 6 * per_epoch  # stopped there
    # The weights put back are the last good epoch's: the guard measures on them what it
    # measured then.
    good = trainer.guard.good["epoch"]
    c = trainer.config
    measured = trainer._count_correct(trainer.model, trainer.guard_set, list(range(128)),
                                      eps=c.eps, steps=c.attack_steps, restarts=1,
                                      seed=c.seed + GUARD_SEED_OFFSET, timer="guard")  # fmt: skip
    seen = next(h for h in trainer.guard.history if h["epoch"] == good)
    assert measured[1].item() / 128 == seen["pgd_acc"]

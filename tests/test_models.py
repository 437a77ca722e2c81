"""The CIFAR networks: architecture (exact parameter counts), normalisation inside the model,
channels_last, bf16 autocast, and training under torch.use_deterministic_algorithms."""

from __future__ import annotations

import contextlib
import copy
import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import DEVICES, HAS_CUDA
from fastpgd import models
from fastpgd.cifar import CIFAR_MEAN, CIFAR_STD
from fastpgd.models import MODELS, MadryCNN, Normalize, PreActResNet18, SmallResNet, WideResNet

# Small members of each family keep CPU runs short; WRN-34-10 itself is built but never run
# (parameter counts, names).
SMALL = {
    "preact-resnet18": lambda **kw: PreActResNet18(**kw),
    "wrn-10-2": lambda **kw: WideResNet(10, 2, **kw),
    "wrn-16-1-dropout": lambda **kw: WideResNet(16, 1, dropout=0.3, **kw),
}


def _on(device: str, build) -> torch.nn.Module:
    torch.manual_seed(0)
    return build().to(device)


# -- architecture ---------------------------------------------------------------------------


def _block_params(cin: int, cout: int, stride: int) -> int:
    """A pre-activation basic block: BN(cin), conv3x3, BN(cout), conv3x3, 1x1 projection."""
    projection = cin * cout if stride != 1 or cin != cout else 0
    return 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout + projection


def preact_resnet18_params(num_classes: int) -> int:
    total, cin = 3 * 64 * 9, 64  # stem conv, no bias
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        total += _block_params(cin, cout, stride) + _block_params(cout, cout, 1)
        cin = cout
    return total + 2 * 512 + 512 * num_classes + num_classes  # final BN, linear


def wide_resnet_params(depth: int, k: int, num_classes: int) -> int:
    n = (depth - 4) // 6
    total, cin = 3 * 16 * 9, 16
    for cout, stride in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
        total += _block_params(cin, cout, stride) + (n - 1) * _block_params(cout, cout, 1)
        cin = cout
    return total + 2 * cin + cin * num_classes + num_classes


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def wrn_34_10():
    return WideResNet()  # 46M parameters: built once for the tests that inspect it


@pytest.mark.parametrize("num_classes", [10, 100])
def test_parameter_counts_match_the_published_architectures(num_classes, wrn_34_10):
    preact = PreActResNet18(num_classes)
    wrn = wrn_34_10 if num_classes == 10 else MODELS["wrn-34-10"](num_classes)
    assert _count(preact) == preact_resnet18_params(num_classes)
    assert _count(wrn) == wide_resnet_params(34, 10, num_classes)
    assert len(wrn.block1.layer) == 5 and wrn.fc.weight.shape == (num_classes, 640)
    if num_classes == 10:
        # The figures the papers' code gives: 11.17M (PreAct ResNet-18), 46.16M (WRN-34-10).
        assert _count(preact) == 11_172_170
        assert _count(wrn) == 46_160_474


@pytest.mark.parametrize("depth, k", [(10, 1), (16, 4), (22, 2), (40, 2)])
def test_wide_resnet_family_counts(depth, k):
    assert _count(WideResNet(depth, k, 100)) == wide_resnet_params(depth, k, 100)


def test_reference_submodule_names(wrn_34_10):
    preact, wrn = PreActResNet18(), wrn_34_10
    keys = set(preact.state_dict())
    assert {"conv1.weight", "layer1.0.bn1.running_mean", "layer2.0.shortcut.0.weight",
            "layer4.1.conv2.weight", "bn.weight", "linear.bias"} <= keys  # fmt: skip
    assert "layer1.0.shortcut.0.weight" not in keys and "layer2.1.shortcut.0.weight" not in keys
    keys = set(wrn.state_dict())
    assert {"conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.4.conv2.weight",
            "bn1.running_var", "fc.weight"} <= keys  # fmt: skip
    assert "block1.layer.1.convShortcut.weight" not in keys and "block3.layer.5.bn1.weight" \
        not in keys  # fmt: skip
    # The normalisation travels with the weights.
    assert {"normalize.mean", "normalize.std"} <= keys


def test_pooling_is_fixed_size_not_adaptive():
    for model in (PreActResNet18(), WideResNet(10, 1)):
        assert not [m for m in model.modules() if "Adaptive" in type(m).__name__]


def test_wide_resnet_initialisation():
    torch.manual_seed(0)
    model = WideResNet(16, 4)
    conv = model.block3.layer[1].conv2  # 256 -> 256, 3x3: He fan-out std sqrt(2 / (9 * 256))
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.05)
    assert torch.equal(model.bn1.weight.detach(), torch.ones(256))
    assert not model.fc.bias.detach().any()


# -- normalisation inside -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL))
def test_normalisation_is_inside_and_in_pixel_units(name):
    mean, std = (0.2, 0.5, 0.7), (0.1, 0.3, 0.25)
    torch.manual_seed(0)
    model = SMALL[name](mean=mean, std=std).eval()
    identity = copy.deepcopy(model)
    identity.normalize = Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    x = torch.rand(2, 3, 32, 32)
    by_hand = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), identity(by_hand))


@pytest.mark.parametrize("num_classes, dataset", [(10, "cifar10"), (100, "cifar100")])
def test_default_statistics_follow_the_dataset(num_classes, dataset):
    for model in (PreActResNet18(num_classes), WideResNet(10, 1, num_classes)):
        assert model.normalize.mean.flatten().tolist() == pytest.approx(CIFAR_MEAN[dataset])
        assert model.normalize.std.flatten().tolist() == pytest.approx(CIFAR_STD[dataset])
        assert model.normalize.mean.shape == (1, 3, 1, 1)


def test_normalize_module():
    norm = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    out = norm(torch.ones(1, 3, 2, 2))
    assert out[0, :, 0, 0].tolist() == [1.0, 3.0, 0.5]
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="mean must be one finite number"):
        Normalize([float("nan")], [1.0])
    with pytest.raises(ValueError, match="one value per channel each, got 3 and 2"):
        Normalize([0.1, 0.2, 0.3], [1.0, 1.0])
    with pytest.raises(TypeError, match="std must be a sequence of numbers"):
        Normalize([0.1], ["a"])


# -- argument checks ------------------------------------------------------------------------


@pytest.mark.parametrize("build, error, words", [
    (lambda: PreActResNet18(1), ValueError, "num_classes must be an int >= 2"),
    (lambda: PreActResNet18(True), ValueError, "num_classes"),
    (lambda: PreActResNet18(7), ValueError, "mean and std are required for num_classes=7"),
    (lambda: PreActResNet18(mean=(0.5,) * 3), ValueError, "mean and std must be given together"),
    (lambda: PreActResNet18(mean=(0.5,) * 2, std=(1.0,) * 2), ValueError, "must have 3 values"),
    (lambda: PreActResNet18(mean=0.5, std=0.5), TypeError, "mean must be a sequence"),
    (lambda: WideResNet(33), ValueError, "depth must be 6n"),
    (lambda: WideResNet(4), ValueError, "depth must be an int >= 10"),
    (lambda: WideResNet(34, 0), ValueError, "widen_factor must be an int >= 1"),
    (lambda: WideResNet(34, 2.5), ValueError, "widen_factor"),
    (lambda: WideResNet(10, 1, dropout=1.0), ValueError, "dropout must be a probability"),
])  # fmt: skip
def test_bad_arguments(build, error, words):
    with pytest.raises(error, match=words):
        build()


def test_seven_classes_with_own_statistics():
    model = PreActResNet18(7, mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (3, 32, 32), (2, 3, 64, 64)])
def test_inputs_must_be_cifar_shaped(shape):
    for model in (PreActResNet18(), WideResNet(10, 1)):
        with pytest.raises(ValueError, match=r"x must have shape \[N, 3, 32, 32\]"):
            model(torch.rand(shape))


# -- channels_last and bf16 autocast --------------------------------------------------------


def _forward_backward(model, x):
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    grad_out = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out).to(out.dtype)
    out.backward(grad_out)
    return out, x.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SMALL))
def test_channels_last_matches_contiguous(device, name):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32, device=device)
    model = SMALL[name]().to(device).eval()  # eval: dropout off, the same function twice
    out, grad = _forward_backward(model, x)

    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    seen = []  # the layout every convolution receives: normalisation must keep channels_last
    for m in model_cl.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_pre_hook(
                lambda _, inp: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last))
            )
    out_cl, grad_cl = _forward_backward(model_cl, x.to(memory_format=torch.channels_last))
    assert seen and all(seen)
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_cl, grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bf16_autocast_forward_backward(device, name, layout):
    model = _on(device, SMALL[name]).to(memory_format=layout).train()
    reference = copy.deepcopy(model)
    x = torch.rand(2, 3, 32, 32, device=device).to(memory_format=layout)
    torch.manual_seed(2)
    with torch.autocast(device, torch.bfloat16):
        out, grad = _forward_backward(model, x)
    assert out.shape == (2, 10) and out.dtype == torch.bfloat16
    assert grad.dtype == torch.float32 and bool(torch.isfinite(grad).all())
    assert bool(torch.isfinite(out).all()) and float(grad.abs().sum()) > 0
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert bool(torch.isfinite(p.grad).all())
    # The same function as in float32, to bf16's precision.
    torch.manual_seed(2)
    out32, _ = _forward_backward(reference, x)
    scale = float(out32.detach().abs().max())
    assert float((out.float() - out32).detach().abs().max()) <= 0.05 * scale + 0.05


# -- deterministic mode ---------------------------------------------------------------------

#: The aten ops behind torch.use_deterministic_algorithms' "will throw a RuntimeError" list
#: (torch 2.13's docstring), CUDA backward kernels included. Tensor.resize_ is left out: it
#: throws only for quantized tensors.
THROWS_IN_DETERMINISTIC_MODE = {
    "aten::avg_pool3d_backward",
    "aten::_adaptive_avg_pool2d_backward", "aten::adaptive_avg_pool2d_backward",
    "aten::_adaptive_avg_pool3d_backward", "aten::adaptive_avg_pool3d_backward",
    "aten::adaptive_max_pool2d_backward",
    "aten::fractional_max_pool2d_backward", "aten::fractional_max_pool3d_backward",
    "aten::max_unpool2d", "aten::max_unpool3d",
    "aten::upsample_linear1d_backward", "aten::upsample_bilinear2d_backward",
    "aten::_upsample_bilinear2d_aa_backward", "aten::upsample_bicubic2d_backward",
    "aten::_upsample_bicubic2d_aa_backward", "aten::upsample_trilinear3d_backward",
    "aten::reflection_pad1d_backward", "aten::reflection_pad2d_backward",
    "aten::reflection_pad3d_backward",
    "aten::nll_loss2d_forward",  # NLLLoss's spatial kernel; the [N, C] one is deterministic
    "aten::_ctc_loss_backward", "aten::_embedding_bag_backward",
    "aten::_embedding_bag_dense_backward",
    "aten::put_", "aten::put", "aten::histc", "aten::bincount", "aten::median",
    "aten::nanmedian", "aten::grid_sampler_2d_backward", "aten::grid_sampler_3d_backward",
    "aten::cudnn_grid_sampler_backward", "aten::cumsum", "aten::cumsum_",
    "aten::scatter_reduce", "aten::scatter_reduce_",
}  # fmt: skip


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._schema.name)
        return func(*args, **(kwargs or {}))


def _ops_of_a_training_step(model: torch.nn.Module) -> set[str]:
    recorder = _RecordOps()
    with recorder:
        _forward_backward(model.train(), torch.rand(2, 3, 32, 32))
    return recorder.ops


AUDITED = {
    **SMALL,
    "small-resnet": lambda: SmallResNet(),
    "madry-cnn": lambda: MadryCNN(in_channels=3, image_size=32),
}


@pytest.mark.parametrize("name", list(AUDITED))
def test_no_op_that_deterministic_mode_forbids(name):
    ops = _ops_of_a_training_step(AUDITED[name]())
    assert "aten::convolution_backward" in ops  # the recorder sees the backward pass
    assert not ops & THROWS_IN_DETERMINISTIC_MODE, sorted(ops & THROWS_IN_DETERMINISTIC_MODE)


def test_the_audit_catches_adaptive_pooling():
    # What the CIFAR networks avoid: adaptive pooling to more than 1x1 has no deterministic
    # CUDA backward (AdaptiveAvgPool2d(1) is computed as a mean and would pass).
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(2))
    assert "aten::_adaptive_avg_pool2d_backward" in _ops_of_a_training_step(model)


@contextlib.contextmanager
def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) inside, the caller's mode restored after."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())  # fmt: skip
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.fixture
def deterministic(monkeypatch):
    if HAS_CUDA:  # cuBLAS is deterministic only with a fixed workspace; torch checks for it
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    with deterministic_algorithms():
        yield


def test_deterministic_mode_is_restored():
    for mode in (False, True):
        torch.use_deterministic_algorithms(mode, warn_only=True)
        try:
            with deterministic_algorithms():
                assert torch.are_deterministic_algorithms_enabled()
                assert not torch.is_deterministic_algorithms_warn_only_enabled()
            assert torch.are_deterministic_algorithms_enabled() is mode
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        finally:
            torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SMALL))
def test_trains_under_deterministic_algorithms(deterministic, device, name):
    assert torch.are_deterministic_algorithms_enabled()
    model = _on(device, SMALL[name])
    x = torch.rand(2, 3, 32, 32, device=device)
    y = torch.tensor([3, 7], device=device)
    grads = []
    for _ in range(2):  # the same step from the same state gives the same gradients, bitwise
        replica = copy.deepcopy(model).train()
        torch.manual_seed(3)  # the dropout masks
        F.cross_entropy(replica(x), y).backward()
        grads.append([p.grad for p in replica.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert all(bool(torch.isfinite(g).all()) for g in grads[0])


# -- dropout, registry, docs ----------------------------------------------------------------


def test_dropout_only_in_training():
    model = WideResNet(10, 1, dropout=0.5)
    x = torch.rand(2, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_registry():
    assert set(MODELS) == {"preact-resnet18", "wrn-34-10"}
    assert MODELS["preact-resnet18"](100).linear.out_features == 100
    assert MODELS["wrn-34-10"].args == (34, 10)  # WideResNet(34, 10, num_classes, ...)


def test_docstring_examples_run():
    result = doctest.testmod(models)
    assert result.attempted > 0 and result.failed == 0

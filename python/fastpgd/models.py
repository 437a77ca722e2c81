"""The models of the project's reference workloads.

- :class:`MadryCNN`: the MNIST network of Madry et al., "Towards Deep Learning Models Resistant
  to Adversarial Attacks" (ICLR 2018): conv5x5x32, pool, conv5x5x64, pool, fc1024, fc10. Its first
  dense layer adapts to the input size, so the same network trains on 8x8 digits or 28x28 MNIST.
- :class:`SmallResNet`: a small residual network for the CIFAR-size (3x32x32) workload.
- :class:`PreActResNet18` and :class:`WideResNet` (WRN-34-10 by default): the networks of CIFAR
  adversarial training (Rice et al. 2020; Madry et al. 2018). Both take pixels in [0, 1] and
  normalise inside (:class:`Normalize`), so that an attack's ``eps`` stays in pixel units.

The CIFAR networks pool with a fixed-size :func:`torch.nn.functional.avg_pool2d`, as their
reference code does, and use no op that :func:`torch.use_deterministic_algorithms` forbids (the
adaptive pools, for one, have no deterministic CUDA backward), so they train in deterministic mode.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastpgd.cifar import CIFAR_CLASSES, CIFAR_MEAN, CIFAR_STD

__all__ = [
    "MODELS",
    "MadryCNN",
    "Normalize",
    "PreActResNet18",
    "SmallResNet",
    "WideResNet",
]


class MadryCNN(nn.Module):
    """conv5x5x32 - pool - conv5x5x64 - pool - fc1024 - fc(num_classes).

    Args:
        in_channels (int): channels of the input images. Default: 1.
        image_size (int): height and width of the (square) input. Default: 28.
        num_classes (int): number of classes. Default: 10.

    Examples::

        >>> model = MadryCNN(image_size=8)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10):
        super().__init__()
        if image_size < 4:
            raise ValueError(f"image_size must be at least 4, got {image_size}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 2 // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 1024),
            nn.ReLU(),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet-8 style network (three stages of one basic block) for 3x32x32 inputs.

    Args:
        in_channels (int): Default: 3.
        num_classes (int): Default: 10.
        width (int): channels of the first stage; the stages use width, 2*width, 4*width.
            Default: 16.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.stages = nn.Sequential(
            _BasicBlock(width, width, 1),
            _BasicBlock(width, 2 * width, 2),
            _BasicBlock(2 * width, 4 * width, 2),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


# ----------------------------------------------------------------------------------------------
# CIFAR networks


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, the statistics held as buffers (saved with the weights).

    Args:
        mean (sequence of float): one value per channel.
        std (sequence of float): one positive value per channel.

    Examples::

        >>> Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])(torch.ones(1, 3, 1, 1)).flatten()
        tensor([2., 2., 2.])
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        stats = {}
        for arg, values in (("mean", mean), ("std", std)):
            try:
                stats[arg] = [float(v) for v in values]
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{arg} must be a sequence of numbers, got {values!r}") from exc
            if not stats[arg] or not all(math.isfinite(v) for v in stats[arg]):
                raise ValueError(f"{arg} must be one finite number per channel, got {values!r}")
        if len(stats["mean"]) != len(stats["std"]):
            raise ValueError(
                f"mean and std must have one value per channel each, got {len(stats['mean'])} "
                f"and {len(stats['std'])}"
            )
        if not all(v > 0 for v in stats["std"]):
            raise ValueError(f"std must be positive, got {std!r}")
        self.register_buffer("mean", torch.tensor(stats["mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(stats["std"]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _cifar_normalize(num_classes, mean, std) -> Normalize:
    """The input normalisation of a CIFAR network, checking ``num_classes`` on the way."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (or neither, for CIFAR's own)")
    if mean is None:
        dataset = {n: name for name, n in CIFAR_CLASSES.items()}.get(num_classes)
        if dataset is None:
            raise ValueError(
                f"mean and std are required for num_classes={num_classes}: the defaults are "
                "CIFAR-10's (10 classes) and CIFAR-100's (100 classes)"
            )
        mean, std = CIFAR_MEAN[dataset], CIFAR_STD[dataset]
    normalize = Normalize(mean, std)
    if normalize.mean.shape[1] != 3:
        raise ValueError(f"mean and std must have 3 values (R, G, B), got {mean!r} and {std!r}")
    return normalize


def _check_cifar_input(x: torch.Tensor) -> None:
    # The fixed pooling window fits 32x32 inputs only; say so instead of failing in the linear.
    if x.dim() != 4 or x.shape[1:] != (3, 32, 32):
        raise ValueError(f"x must have shape [N, 3, 32, 32], got {tuple(x.shape)}")


class _PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the input (through a 1x1 conv when it changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # A projection shortcut starts from the activated input, an identity from the raw one.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for 3x32x32 images in [0, 1], normalisation included.

    He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016), in the CIFAR variant
    of Rice et al., "Overfitting in adversarially robust deep learning" (ICML 2020): a 3x3 conv
    with 64 channels, four stages of two pre-activation blocks with 64, 128, 256, 512 channels
    (strides 1, 2, 2, 2), BN-ReLU, 4x4 average pool, linear. 11,172,170 parameters for 10
    classes. Submodules are named as in that code (``conv1``, ``layer1`` .. ``layer4``, ``bn``,
    ``linear``), so its checkpoints load with ``strict=False`` (they lack the normalisation
    buffers).

    Args:
        num_classes (int): Default: 10.
        mean (sequence of 3 floats, optional): per-channel mean of the input pixels.
            Default: CIFAR-10's for 10 classes, CIFAR-100's for 100
            (:data:`fastpgd.cifar.CIFAR_MEAN`); required for any other ``num_classes``.
        std (sequence of 3 floats, optional): per-channel standard deviation, given with
            ``mean``. Default: as ``mean``.

    Shape:
        ``x (Tensor[N, 3, 32, 32])`` in [0, 1] -> ``Tensor[N, num_classes]`` logits.

    Examples::

        >>> model = PreActResNet18(num_classes=10).eval()
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        self.normalize = _cifar_normalize(num_classes, mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        stages, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks = (_PreActBlock(cin, cout, stride), _PreActBlock(cout, cout, 1))
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_cifar_input(x)
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)  # 4x4 map -> 1x1
        return self.linear(out.flatten(1))


class _WideBlock(nn.Module):
    """The pre-activation basic block of a wide ResNet, with optional dropout between convs."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        same = stride == 1 and cin == cout
        self.convShortcut = None if same else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        # A projection shortcut starts from the activated input, an identity from the raw one.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class _WideStage(nn.Module):
    def __init__(self, blocks: int, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(
            *(_WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, dropout)
              for i in range(blocks))
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """Wide residual network WRN-depth-k for 3x32x32 images in [0, 1], normalisation included.

    Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016): a 3x3 conv with 16 channels,
    three stages of ``(depth - 4) / 6`` pre-activation blocks with 16k, 32k, 64k channels
    (strides 1, 2, 2), BN-ReLU, 8x8 average pool, linear. The default WRN-34-10 without dropout
    is the network of Madry et al. (ICLR 2018) and of Rice et al. (ICML 2020): 46,160,474
    parameters for 10 classes. Convolutions start from He et al.'s normal initialisation
    (fan-out), as in the reference code, whose submodule names (``conv1``, ``block1`` ..
    ``block3``, ``bn1``, ``fc``; ``convShortcut`` in a block) are kept so that its checkpoints
    load with ``strict=False`` (they lack the normalisation buffers).

    Args:
        depth (int): total depth; ``depth - 4`` must be a positive multiple of 6. Default: 34.
        widen_factor (int): k, the width multiplier. Default: 10.
        num_classes (int): Default: 10.
        dropout (float): dropout probability between a block's convolutions. Default: 0.
        mean (sequence of 3 floats, optional): per-channel mean of the input pixels.
            Default: CIFAR-10's for 10 classes, CIFAR-100's for 100
            (:data:`fastpgd.cifar.CIFAR_MEAN`); required for any other ``num_classes``.
        std (sequence of 3 floats, optional): per-channel standard deviation, given with
            ``mean``. Default: as ``mean``.

    Shape:
        ``x (Tensor[N, 3, 32, 32])`` in [0, 1] -> ``Tensor[N, num_classes]`` logits.

    Examples::

        >>> model = WideResNet(depth=10, widen_factor=1).eval()  # WRN-10-1, a small sibling
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        *,
        dropout: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        for arg, value, minimum in (("depth", depth, 10), ("widen_factor", widen_factor, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{arg} must be an int >= {minimum}, got {value!r}")
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 (10, 16, 22, 28, 34, ...), got {depth}")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.normalize = _cifar_normalize(num_classes, mean, std)
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = _WideStage(blocks, widths[0], widths[1], 1, float(dropout))
        self.block2 = _WideStage(blocks, widths[1], widths[2], 2, float(dropout))
        self.block3 = _WideStage(blocks, widths[2], widths[3], 2, float(dropout))
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_cifar_input(x)
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)  # 8x8 map -> 1x1
        return self.fc(out.flatten(1))


#: The CIFAR networks by name, each called as ``MODELS[name](num_classes, mean=..., std=...)``.
MODELS = {
    "preact-resnet18": PreActResNet18,
    "wrn-34-10": functools.partial(WideResNet, 34, 10),
}

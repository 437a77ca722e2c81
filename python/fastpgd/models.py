"""The models of the project's reference workloads.

- :class:`MadryCNN`: the MNIST network of Madry et al., "Towards Deep Learning Models Resistant
  to Adversarial Attacks" (ICLR 2018): conv5x5x32, pool, conv5x5x64, pool, fc1024, fc10. Its first
  dense layer adapts to the input size, so the same network trains on 8x8 digits or 28x28 MNIST.
- :class:`SmallResNet`: a small residual network for the CIFAR-size (3x32x32) workload.
"""

from __future__ import annotations

import torch
from torch import nn


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

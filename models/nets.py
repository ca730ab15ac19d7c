"""The six lecture architectures (SPEC §1), exactly as specified, plus export wrappers.

The bare nets are what the lecture trains. The ``*Serving`` wrappers bake the preprocessing a
served model needs (MNIST normalisation, the tabular feature scaling) into the exported graph, so
serving never re-derives it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class DiabetesNet(nn.Module):
    """Linear(8,6) → Sigmoid → Linear(6,4) → Sigmoid → Linear(4,1) → Sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.linear1 = nn.Linear(8, 6)
        self.linear2 = nn.Linear(6, 4)
        self.linear3 = nn.Linear(4, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sigmoid(self.linear1(x))
        x = self.sigmoid(self.linear2(x))
        return self.sigmoid(self.linear3(x))


class MnistFC(nn.Module):
    """view(-1,784) → 784-512-256-128-64-10 with ReLU between."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(784, 512)
        self.l2 = nn.Linear(512, 256)
        self.l3 = nn.Linear(256, 128)
        self.l4 = nn.Linear(128, 64)
        self.l5 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 784)
        x = F.relu(self.l1(x))
        x = F.relu(self.l2(x))
        x = F.relu(self.l3(x))
        x = F.relu(self.l4(x))
        return self.l5(x)


class MnistCNN(nn.Module):
    """Conv(1,10,5) → pool → ReLU → Conv(10,20,5) → pool → ReLU → Linear(320,10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.pooling = nn.MaxPool2d(2)
        self.fc = nn.Linear(320, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size = x.size(0)
        x = F.relu(self.pooling(self.conv1(x)))
        x = F.relu(self.pooling(self.conv2(x)))
        x = x.view(batch_size, -1)
        return self.fc(x)


class InceptionA(nn.Module):
    """Four branches (16 + 24 + 24 + 24 = 88 channels) concatenated on the channel axis."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = nn.Conv2d(in_channels, 16, kernel_size=1)

        self.branch5x5_1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch5x5_2 = nn.Conv2d(16, 24, kernel_size=5, padding=2)

        self.branch3x3_1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch3x3_2 = nn.Conv2d(16, 24, kernel_size=3, padding=1)
        self.branch3x3_3 = nn.Conv2d(24, 24, kernel_size=3, padding=1)

        self.branch_pool = nn.Conv2d(in_channels, 24, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3 = self.branch3x3_3(self.branch3x3_2(self.branch3x3_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch5x5, branch3x3, branch_pool], dim=1)


class MnistGoogLeNet(nn.Module):
    """Conv(1,10,5) → pool → ReLU → InceptionA(10) → Conv(88,20,5) → pool → ReLU →
    InceptionA(20) → Linear(1408,10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(88, 20, kernel_size=5)
        self.incep1 = InceptionA(in_channels=10)
        self.incep2 = InceptionA(in_channels=20)
        self.mp = nn.MaxPool2d(2)
        self.fc = nn.Linear(1408, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_size = x.size(0)
        x = F.relu(self.mp(self.conv1(x)))
        x = self.incep1(x)
        x = F.relu(self.mp(self.conv2(x)))
        x = self.incep2(x)
        x = x.view(in_size, -1)
        return self.fc(x)


class ResidualBlock(nn.Module):
    """y = relu(conv1(x)); y = conv2(y); return relu(x + y)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        return F.relu(x + y)


class MnistResNet(nn.Module):
    """Conv(1,16,5) → pool → ReLU → Res(16) → Conv(16,32,5) → pool → ReLU → Res(32) →
    Linear(512,10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        self.mp = nn.MaxPool2d(2)
        self.rblock1 = ResidualBlock(16)
        self.rblock2 = ResidualBlock(32)
        self.fc = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_size = x.size(0)
        x = self.mp(F.relu(self.conv1(x)))
        x = self.rblock1(x)
        x = self.mp(F.relu(self.conv2(x)))
        x = self.rblock2(x)
        x = x.view(in_size, -1)
        return self.fc(x)


class CharRNN(nn.Module):
    """Embedding(V,E) → GRU (batch_first, L layers, hidden H) → Linear(H,V) at every step.

    ``forward(tokens, state)`` takes the recurrent state explicitly and returns the new one, so a
    server can generate step by step with the state held outside the graph.
    """

    def __init__(self, vocab_size: int, embed: int = 64, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.layers = layers
        self.emb = nn.Embedding(vocab_size, embed)
        self.rnn = nn.GRU(embed, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, state_out = self.rnn(self.emb(tokens), state)
        return self.fc(out), state_out

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(self.layers, batch, self.hidden)


class Standardize(nn.Module):
    """(x - mean) / std with the statistics stored as buffers, so they travel inside the graph."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone().float())
        self.register_buffer("std", std.clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ServingWrapper(nn.Module):
    """Preprocessing followed by the trained net: what gets exported and served."""

    def __init__(self, pre: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.pre = pre
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.pre(x))


def mnist_standardize() -> Standardize:
    return Standardize(torch.tensor(MNIST_MEAN), torch.tensor(MNIST_STD))

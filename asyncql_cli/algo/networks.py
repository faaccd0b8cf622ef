"""Q-networks: an MLP torso (flat observations) or the Nature DQN CNN (stacked frames), with
a plain or dueling head.

Dueling (Wang et al. 2016): Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a').
Every process builds its network from the same plain arguments (`build_network`), and the
parameters are registered in a fixed order (torso, then advantage, then value), so weights
published as one flat tensor line up everywhere and checkpoints keep their names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from asyncql_cli.config.schema import NetworkConfig
from asyncql_cli.errors import BadInput

# Nature DQN convolutions (Mnih et al. 2015): (output channels, kernel size, stride) each
NATURE_CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
# nature_cnn inputs are pixel intensities in [0, PIXEL_MAX] (uint8 frames, or floats holding them)
PIXEL_MAX = 255.0


def hidden_layers(width: int, hidden: Sequence[int], layer_norm: bool = False) -> tuple[list[nn.Module], int]:
    """Linear (+ LayerNorm) + ReLU for each size in `hidden`, starting from `width`; and the
    width they end at."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), *([nn.LayerNorm(size)] if layer_norm else []), nn.ReLU()]
        width = size
    return layers, width


class QHead(nn.Module):
    """The output layer every Q-network ends with: Q = A, or with dueling Q = V + A - mean A.
    Registered after the torso, so parameters keep the order torso, advantage, value."""

    def add_head(self, width: int, num_actions: int, dueling: bool) -> None:
        self.dueling = dueling
        self.advantage = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1) if dueling else None

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Q-values in float32, also under autocast: in bf16 they would be rounded to steps of 0.5
        near Q = 100, and with them the targets, TD errors, priorities and double-DQN argmax.
        Without autocast (the actors' forward) this costs one flag check (benchmarks/RESULTS.md)."""
        device_type = "cuda" if features.is_cuda else "cpu"
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return self.head(features.float())  # autocast off in there: the float32 path below
        advantage = F.linear(features, self.advantage.weight, self.advantage.bias)
        if self.value is None:
            return advantage
        value = F.linear(features, self.value.weight, self.value.bias)
        return value + advantage - advantage.mean(dim=1, keepdim=True)


class QNetwork(QHead):
    def __init__(self, obs_dim: int, num_actions: int, hidden: Sequence[int], dueling: bool,
                 layer_norm: bool = False):
        super().__init__()
        layers, width = hidden_layers(obs_dim, hidden, layer_norm)
        self.torso = nn.Sequential(*layers)
        # the torso's layers, called directly in forward: a small net's step time is mostly
        # per-module call overhead (the learner runs three passes per update)
        linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
        norms = [layer for layer in layers if isinstance(layer, nn.LayerNorm)] or [None] * len(linears)
        self._layers = list(zip(linears, norms))
        self.add_head(width, num_actions, dueling)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = obs.float()
        for linear, norm in self._layers:  # same as self.torso(features)
            features = F.linear(features, linear.weight, linear.bias)
            if norm is not None:
                features = F.layer_norm(features, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            features = torch.relu(features)
        return self.head(features)


class NatureCNN(QHead):
    """Nature DQN: conv 32 8x8/4, conv 64 4x4/2, conv 64 3x3/1 (ReLU each), flatten, fully
    connected `hidden` layers (ReLU), then the head.

    Takes (B, C, H, W) pixel intensities in [0, 255], ideally uint8: they cross the host-device
    link as bytes (4x less traffic than float32) and are scaled to [0, 1] here, on the device.
    Floating inputs are scaled the same way (an actor may hand float copies of the frames).
    """

    def __init__(self, obs_shape: Sequence[int], num_actions: int, hidden: Sequence[int], dueling: bool,
                 layer_norm: bool = False):
        super().__init__()
        channels, height, width = (int(size) for size in obs_shape)
        convs: list[nn.Module] = []
        for out_channels, kernel, stride in NATURE_CONVS:
            convs += [nn.Conv2d(channels, out_channels, kernel, stride), nn.ReLU()]
            channels = out_channels
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        self.conv = nn.Sequential(*convs, nn.Flatten())
        layers, features = hidden_layers(channels * height * width, hidden, layer_norm)
        self.fc = nn.Sequential(*layers)
        self.add_head(features, num_actions, dueling)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.conv(obs.float() / PIXEL_MAX)))


def min_image_size() -> int:
    """Smallest height/width the Nature convolutions leave at least one output pixel of."""
    size = 1
    for _, kernel, stride in reversed(NATURE_CONVS):
        size = (size - 1) * stride + kernel
    return size


def shape_problem(name: str, obs_shape: Sequence[int]) -> Optional[str]:
    """Why network `name` cannot take observations of this shape (None: it can). The one check
    behind both `build_network` and the env inspection."""
    shape = tuple(int(size) for size in obs_shape)
    if name == "nature_cnn":
        smallest = min_image_size()
        if len(shape) != 3 or min(shape[1:]) < smallest:
            return (f"network=nature_cnn takes images (channels, height, width) of at least "
                    f"{smallest}x{smallest} (Atari: 4x84x84), got shape {shape}")
    elif len(shape) != 1:
        hint = "; use network=nature_cnn" if len(shape) == 3 else ""
        return f"network={name} takes flat vectors, got shape {shape}{hint}"
    return None


def build_network(network: NetworkConfig, obs_shape: Sequence[int], num_actions: int) -> QNetwork | NatureCNN:
    """Build from the `network` config section and the env's shapes; a shape the network cannot
    take is a BadInput."""
    if network.name not in ("mlp", "nature_cnn"):
        raise BadInput(f"network.name={network.name!r}: expected mlp or nature_cnn")
    problem = shape_problem(network.name, obs_shape)
    if problem is not None:
        raise BadInput(problem)
    hidden = list(network.hidden)
    if network.name == "mlp":
        return QNetwork(int(obs_shape[0]), num_actions, hidden, network.dueling, network.layer_norm)
    return NatureCNN(obs_shape, num_actions, hidden, network.dueling, network.layer_norm)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

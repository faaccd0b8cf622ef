"""Q-networks: an MLP torso (flat observations) or the Nature DQN CNN (stacked frames), with
a plain or dueling head.

Dueling (Wang et al. 2016): Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a').
Every process builds its network from the same plain arguments (`build_network`), and the
parameters are registered in a fixed order (torso, then advantage, then value), so weights
published as one flat tensor line up everywhere and checkpoints keep their names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from asyncql_cli.config import BadInput

# Nature DQN convolutions (Mnih et al. 2015): (output channels, kernel size, stride) each
NATURE_CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
# nature_cnn inputs are pixel intensities in [0, PIXEL_MAX] (uint8 frames, or floats holding them)
PIXEL_MAX = 255.0


class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, num_actions: int, hidden: Sequence[int], dueling: bool):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.torso = nn.Sequential(*layers)
        # the torso's Linear layers, called directly in forward: a small net's step time is
        # mostly per-module call overhead (the learner runs three passes per update)
        self._linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
        self.dueling = dueling
        self.advantage = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1) if dueling else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = obs.float()
        for linear in self._linears:  # same as self.torso(features)
            features = torch.relu(F.linear(features, linear.weight, linear.bias))
        advantage = F.linear(features, self.advantage.weight, self.advantage.bias)
        if self.value is None:
            return advantage
        value = F.linear(features, self.value.weight, self.value.bias)
        return value + advantage - advantage.mean(dim=1, keepdim=True)


class NatureCNN(nn.Module):
    """Nature DQN: conv 32 8x8/4, conv 64 4x4/2, conv 64 3x3/1 (ReLU each), flatten, fully
    connected `hidden` layers (ReLU), then the head.

    Takes (B, C, H, W) pixel intensities in [0, 255], ideally uint8: they cross the host-device
    link as bytes (4x less traffic than float32) and are scaled to [0, 1] here, on the device.
    Floating inputs are scaled the same way (an actor may hand float copies of the frames).
    """

    def __init__(self, obs_shape: Sequence[int], num_actions: int, hidden: Sequence[int], dueling: bool):
        super().__init__()
        channels, height, width = (int(size) for size in obs_shape)
        convs: list[nn.Module] = []
        for out_channels, kernel, stride in NATURE_CONVS:
            convs += [nn.Conv2d(channels, out_channels, kernel, stride), nn.ReLU()]
            channels = out_channels
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        self.conv = nn.Sequential(*convs, nn.Flatten())
        layers: list[nn.Module] = []
        width = channels * height * width
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.fc = nn.Sequential(*layers)
        self.dueling = dueling
        self.advantage = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1) if dueling else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.fc(self.conv(obs.float() / PIXEL_MAX))
        advantage = self.advantage(features)
        if self.value is None:
            return advantage
        return self.value(features) + advantage - advantage.mean(dim=1, keepdim=True)


def min_image_size() -> int:
    """Smallest height/width the Nature convolutions leave at least one output pixel of."""
    size = 1
    for _, kernel, stride in reversed(NATURE_CONVS):
        size = (size - 1) * stride + kernel
    return size


def build_network(network: dict, obs_shape: Sequence[int], num_actions: int) -> QNetwork | NatureCNN:
    """Build from the plain `network` config section (`name`: mlp | nature_cnn; mlp when
    absent) and the env's shapes; a shape the network cannot take is a BadInput."""
    name = network.get("name", "mlp")
    hidden, dueling = list(network["hidden"]), bool(network["dueling"])
    shape = tuple(int(size) for size in obs_shape)
    if name == "mlp":
        if len(shape) != 1:
            raise BadInput(f"network=mlp takes flat observations, got shape {shape} (images: network=nature_cnn)")
        return QNetwork(shape[0], num_actions, hidden, dueling)
    if name == "nature_cnn":
        smallest = min_image_size()
        if len(shape) != 3 or min(shape[1:]) < smallest:
            raise BadInput(f"network=nature_cnn takes (channels, height, width) images of at least "
                           f"{smallest}x{smallest} (Atari: 4x84x84), got shape {shape}")
        return NatureCNN(shape, num_actions, hidden, dueling)
    raise BadInput(f"network.name={name!r}: expected mlp or nature_cnn")


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

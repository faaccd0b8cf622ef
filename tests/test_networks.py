"""Q-networks (mlp, nature_cnn) against their definitions, and the learner's gradient
clipping against torch's reference version (on both the private and the public torch APIs)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch

from asyncql_cli.algo.networks import NatureCNN, build_network, min_image_size, num_parameters
from asyncql_cli.algo.update import clip_gradients
from asyncql_cli.compat import use_private
from asyncql_cli.config.schema import NetworkConfig
from asyncql_cli.errors import BadInput
from asyncql_cli.shm.params import ParameterStore

ATARI = (4, 84, 84)
CNN = NetworkConfig(name="nature_cnn", hidden=[512], dueling=False)


@pytest.fixture(params=[True, False], ids=["private-apis", "public-apis"])
def private_apis(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run the test on torch's private fast paths (asyncql_cli.compat) and on their public fallbacks."""
    with use_private(request.param):
        yield request.param


def _through_modules(net: torch.nn.Module, obs: torch.Tensor) -> torch.Tensor:
    features = net.torso(obs)
    advantage = net.advantage(features)
    if net.value is None:
        return advantage
    return net.value(features) + advantage - advantage.mean(1, keepdim=True)


@pytest.mark.parametrize("dueling,layer_norm", [(False, False), (True, False), (False, True), (True, True)])
def test_forward_equals_the_module_graph(dueling: bool, layer_norm: bool) -> None:
    """forward calls the torso's layers directly; it must equal running the modules, also
    after new weights are loaded (load_state_dict copies into the same parameters)."""
    torch.manual_seed(0)
    net = build_network(NetworkConfig(hidden=[32, 16], dueling=dueling, layer_norm=layer_norm), (5,), 3)
    norms = [m for m in net.torso if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == (2 if layer_norm else 0)
    obs = torch.randn(7, 5)
    if layer_norm:  # each hidden layer's pre-activations are normalized: mean 0, variance 1 per row
        pre = net.torso[1](net.torso[0](obs))
        assert torch.allclose(pre.mean(1), torch.zeros(7), atol=1e-5)
        assert torch.allclose(pre.var(1, unbiased=False), torch.ones(7), atol=1e-3)
    assert torch.allclose(net(obs), _through_modules(net, obs), atol=1e-6)
    before = net(obs)
    net.load_state_dict({k: v + 0.1 for k, v in net.state_dict().items()})
    assert not torch.allclose(net(obs), before)
    assert torch.allclose(net(obs), _through_modules(net, obs), atol=1e-6)


@pytest.mark.parametrize("max_norm", [0.5, 1e6, None])
def test_clip_gradients_matches_clip_grad_norm(max_norm: float | None, private_apis: bool) -> None:
    torch.manual_seed(1)
    grads = [torch.randn(4, 3) * 3, torch.randn(5)]
    reference = [g.clone().requires_grad_(False) for g in grads]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in reference]
    for p, g in zip(params, reference):
        p.grad = g
    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    norm = clip_gradients(grads, max_norm)
    assert float(norm) == pytest.approx(float(expected_norm), rel=1e-6)
    for mine, theirs in zip(grads, reference):
        assert torch.allclose(mine, theirs, atol=1e-6)
    if max_norm == 0.5:
        assert float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))) == pytest.approx(0.5, rel=1e-4)


def _cnn_through_modules(net: NatureCNN, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage, value or None) of float inputs already in [0, 1], module by module."""
    features = net.fc(net.conv(pixels))
    return net.advantage(features), None if net.value is None else net.value(features)


def test_mlp_parameter_names_are_unchanged() -> None:
    """Checkpoints of mlp runs load by these names."""
    net = build_network(NetworkConfig(name="mlp", hidden=[8, 8], dueling=True), (3,), 2)
    assert [name for name, _ in net.named_parameters()] == [
        "torso.0.weight", "torso.0.bias", "torso.2.weight", "torso.2.bias",
        "advantage.weight", "advantage.bias", "value.weight", "value.bias",
    ]


def test_nature_cnn_takes_uint8_frames_and_returns_float_q_values() -> None:
    torch.manual_seed(0)
    net = build_network(CNN, ATARI, 6)
    frames = torch.randint(0, 256, (5, *ATARI), dtype=torch.uint8)
    q = net(frames)
    assert q.shape == (5, 6) and q.dtype == torch.float32 and torch.isfinite(q).all()
    # the Nature DQN parameter count: convolutions, one 3136 -> 512 layer, a 512 -> 6 head
    convs = (4 * 32 * 8 * 8 + 32) + (32 * 64 * 4 * 4 + 64) + (64 * 64 * 3 * 3 + 64)
    assert num_parameters(net) == convs + (64 * 7 * 7 * 512 + 512) + (512 * 6 + 6)


def test_nature_cnn_scales_pixels_to_the_unit_interval() -> None:
    """uint8 255 is input 1.0 to the same weights; floats holding pixel values scale alike."""
    torch.manual_seed(1)
    net = build_network(CNN, ATARI, 4)
    white = torch.full((2, *ATARI), 255, dtype=torch.uint8)
    advantage, _ = _cnn_through_modules(net, torch.ones(2, *ATARI))
    torch.testing.assert_close(net(white), advantage)
    frames = torch.randint(0, 256, (3, *ATARI), dtype=torch.uint8)
    torch.testing.assert_close(net(frames), net(frames.float()))
    torch.testing.assert_close(net(frames), _cnn_through_modules(net, frames.float() / 255)[0])


def test_nature_cnn_dueling_head_removes_the_mean_advantage() -> None:
    torch.manual_seed(2)
    net = build_network(replace(CNN, dueling=True), ATARI, 5)
    frames = torch.randint(0, 256, (4, *ATARI), dtype=torch.uint8)
    q = net(frames)
    advantage, value = _cnn_through_modules(net, frames.float() / 255)
    torch.testing.assert_close(q.mean(1, keepdim=True), value)  # mean_a Q = V
    torch.testing.assert_close(q - value, advantage - advantage.mean(1, keepdim=True))


def test_nature_cnn_weights_publish_in_a_fixed_order() -> None:
    """Two processes build the same layout: a flat copy of one's weights loads into the other."""
    torch.manual_seed(3)
    learner_net = build_network(replace(CNN, dueling=True), ATARI, 3)
    actor_net = build_network(replace(CNN, dueling=True), ATARI, 3)
    assert [n for n, _ in learner_net.named_parameters()] == [n for n, _ in actor_net.named_parameters()]
    store = ParameterStore(num_parameters(learner_net))
    store.publish(learner_net, 7)
    storage = [p.data_ptr() for p in actor_net.parameters()]
    assert store.read_into(actor_net) == 7
    assert [p.data_ptr() for p in actor_net.parameters()] == storage  # copied in place
    frames = torch.randint(0, 256, (2, *ATARI), dtype=torch.uint8)
    assert torch.equal(actor_net(frames), learner_net(frames))


@pytest.mark.parametrize(("network", "shape", "match"), [
    (CNN, (4,), "nature_cnn takes"),
    (CNN, (4, 30, 84), "at least 36x36"),
    (NetworkConfig(name="mlp", hidden=[8], dueling=False), ATARI, "mlp takes flat"),
    (NetworkConfig(name="resnet", hidden=[8], dueling=False), (4,), "network.name"),
])
def test_build_network_rejects_what_it_cannot_take(network: NetworkConfig, shape: tuple, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        build_network(network, shape, 2)


def test_min_image_size_is_the_smallest_input_that_fits() -> None:
    smallest = min_image_size()
    assert build_network(CNN, (1, smallest, smallest), 2)(torch.zeros(1, 1, smallest, smallest)).shape == (1, 2)
    with pytest.raises(BadInput):
        build_network(CNN, (1, smallest - 1, smallest), 2)

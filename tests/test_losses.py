"""TD targets and losses on one-input linear Q-networks whose values are easy to work out by hand.

    online  Q(x)  = [x, 2x - 0.5]
    target  Q-(x) = [3x, x]

For x = 1 the online net prefers action 1 while the target net's maximum is action 0, so DQN
(max of Q-) and double DQN (Q- at the online argmax) give different targets.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from asyncql_cli.algo.losses import td_loss, td_target, update_target
from asyncql_cli.compat import use_private


@pytest.fixture(params=[True, False], ids=["private-apis", "public-apis"])
def private_apis(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Target updates on torch's private fast paths (asyncql_cli.compat) and on their public fallbacks."""
    with use_private(request.param):
        yield request.param


def linear(weights: list[float], biases: list[float]) -> nn.Linear:
    layer = nn.Linear(1, len(weights))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weights)[:, None])
        layer.bias.copy_(torch.tensor(biases))
    return layer


def nets() -> tuple[nn.Linear, nn.Linear]:
    return linear([1.0, 2.0], [0.0, -0.5]), linear([3.0, 1.0], [0.0, 0.0])


# next x:        1                -1                    1000 (terminal)
# online Q:      [1, 1.5] -> a=1  [-1, -2.5] -> a=0     -
# target Q-:     [3, 1]           [-3, -1]              [3000, 1000]
NEXT_OBS = torch.tensor([[1.0], [-1.0], [1000.0]])
REWARD = torch.tensor([0.5, 1.0, -1.0])
DISCOUNT = torch.tensor([0.9, 0.81, 0.0])
DQN_Y = [0.5 + 0.9 * 3, 1.0 + 0.81 * -1, -1.0]  # 3.2, 0.19, -1
DOUBLE_Y = [0.5 + 0.9 * 1, 1.0 + 0.81 * -3, -1.0]  # 1.4, -1.43, -1


def test_dqn_target_bootstraps_from_the_target_networks_max():
    q_net, target_net = nets()
    y = td_target(q_net, target_net, REWARD, NEXT_OBS, DISCOUNT, double=False)
    assert y.tolist() == pytest.approx(DQN_Y, rel=1e-6)


def test_double_dqn_target_evaluates_the_online_argmax_with_the_target_network():
    q_net, target_net = nets()
    y = td_target(q_net, target_net, REWARD, NEXT_OBS, DISCOUNT, double=True)
    assert y.tolist() == pytest.approx(DOUBLE_Y, rel=1e-6)


@pytest.mark.parametrize("double", [False, True])
def test_zero_discount_means_no_bootstrap(double):
    q_net, target_net = nets()
    reward = torch.tensor([0.25, -2.0])
    y = td_target(q_net, target_net, reward, torch.tensor([[1000.0], [-1000.0]]), torch.zeros(2), double)
    assert y.tolist() == reward.tolist()


# obs x = [1, 0, 2], actions [0, 1, 1] -> Q(s, a) = [1, -0.5, 3.5]; with the DQN targets above
# (the third transition bootstraps nothing) the TD errors y - Q are [2.2, 0.69, -4.5].
OBS = torch.tensor([[1.0], [0.0], [2.0]])
ACTION = torch.tensor([0, 1, 1])
TD_ERROR = [2.2, 0.69, -4.5]


def loss_of(kind: str, delta: float = 1.0, weight=None, double: bool = False):
    q_net, target_net = nets()
    out = td_loss(q_net, target_net, OBS, ACTION, REWARD, NEXT_OBS, DISCOUNT, double, kind, delta, weight)
    return out, q_net, target_net


def huber(d: float, delta: float) -> float:
    return 0.5 * d * d if abs(d) <= delta else delta * (abs(d) - 0.5 * delta)


def test_td_error_and_q_mean():
    out, _, _ = loss_of("huber")
    assert out.td_error.tolist() == pytest.approx(TD_ERROR, rel=1e-5)
    assert float(out.q_mean) == pytest.approx((1.0 - 0.5 + 3.5) / 3)


def test_huber_loss_values():
    out, _, _ = loss_of("huber", delta=1.0)
    # [2.2 - 0.5, 0.5 * 0.69^2, 4.5 - 0.5] = [1.7, 0.23805, 4.0]
    assert out.loss.item() == pytest.approx((1.7 + 0.23805 + 4.0) / 3, rel=1e-5)
    out, _, _ = loss_of("huber", delta=2.0)
    # [2 * (2.2 - 1), 0.23805, 2 * (4.5 - 1)] = [2.4, 0.23805, 7.0]
    assert out.loss.item() == pytest.approx((2.4 + 0.23805 + 7.0) / 3, rel=1e-5)
    assert [huber(d, 2.0) for d in TD_ERROR] == pytest.approx([2.4, 0.23805, 7.0])


def test_mse_loss_value():
    out, _, _ = loss_of("mse")
    assert out.loss.item() == pytest.approx((2.2**2 + 0.69**2 + 4.5**2) / 3, rel=1e-5)


@pytest.mark.parametrize("kind", ["huber", "mse"])
def test_importance_weights_scale_each_sample(kind):
    weight = torch.tensor([1.0, 2.0, 0.5])
    out, _, _ = loss_of(kind, weight=weight)
    per_sample = [huber(d, 1.0) if kind == "huber" else d * d for d in TD_ERROR]
    expected = sum(w * p for w, p in zip(weight.tolist(), per_sample)) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    unweighted, _, _ = loss_of(kind)
    assert out.loss.item() != pytest.approx(unweighted.loss.item())


def test_gradient_flows_into_the_online_network_only():
    out, q_net, target_net = loss_of("mse")
    out.loss.backward()
    assert all(p.grad is None for p in target_net.parameters())
    # dL/dQ_i = 2 (Q_i - y_i) / 3 = -2 d_i / 3, and dQ/dW[a] = x, dQ/db[a] = 1 for the taken action.
    g = [-2 * d / 3 for d in TD_ERROR]
    assert q_net.weight.grad[:, 0].tolist() == pytest.approx([g[0] * 1.0, g[1] * 0.0 + g[2] * 2.0], rel=1e-5)
    assert q_net.bias.grad.tolist() == pytest.approx([g[0], g[1] + g[2]], rel=1e-5)


def test_double_dqn_loss_uses_the_double_targets():
    out, _, _ = loss_of("mse", double=True)
    q = [1.0, -0.5, 3.5]
    assert out.td_error.tolist() == pytest.approx([y - v for y, v in zip(DOUBLE_Y, q)], rel=1e-5)


def test_hard_target_update_copies_the_online_weights(private_apis):
    q_net, target_net = nets()
    update_target(q_net, target_net, tau=1.0)
    assert target_net.weight[:, 0].tolist() == [1.0, 2.0]
    assert target_net.bias.tolist() == [0.0, -0.5]
    with torch.no_grad():  # a copy, not shared storage
        q_net.weight.add_(10.0)
    assert target_net.weight[:, 0].tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("tau", "weight", "bias"),
    [
        (0.5, [(1 + 3) / 2, (2 + 1) / 2], [0.0, -0.25]),
        (0.25, [3 + 0.25 * (1 - 3), 1 + 0.25 * (2 - 1)], [0.0, -0.125]),
    ],
)
def test_polyak_target_update(tau, weight, bias, private_apis):
    q_net, target_net = nets()
    update_target(q_net, target_net, tau=tau)
    assert target_net.weight[:, 0].tolist() == weight
    assert target_net.bias.tolist() == bias
    assert q_net.weight[:, 0].tolist() == [1.0, 2.0]  # the online network is left alone
    assert q_net.bias.tolist() == [0.0, -0.5]

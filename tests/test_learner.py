"""The learner in-process on a replay with known contents: it learns the right Q-values,
and each algorithm key (target updates, lr schedule, dueling, prioritized, non-finite
handling, publishing) does what it says."""

from __future__ import annotations

import queue
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from asyncql_cli.learner import Learner, LearnerSettings, NonFiniteLoss
from asyncql_cli.networks import build_network, num_parameters
from asyncql_cli.params import ParameterStore
from asyncql_cli.process import Counters
from asyncql_cli.replay import ReplayStorage

NETWORK = {"name": "mlp", "hidden": [32], "dueling": False}


def _settings(tmp_path: Path, **changes: object) -> LearnerSettings:
    base = LearnerSettings(
        obs_shape=(2,), num_actions=2, network=NETWORK, device="cpu", lr=1e-2, adam_eps=1e-8,
        double=True, loss="huber", huber_delta=1.0, batch_size=32, target_update=10, target_tau=1.0,
        max_grad_norm=10.0, replay_ratio=1.0, learning_starts=0, publish_interval=5, nonfinite="stop",
        seed=0, stats_interval_seconds=60.0, checkpoint_dir=str(tmp_path), checkpoint_interval_seconds=60.0,
        checkpoint_meta={}, total_env_steps=1000,
    )
    return replace(base, **changes)


def _bandit_storage(reward_nan: bool = False) -> ReplayStorage:
    """One-step episodes: state one-hot of s in {0, 1}; action a pays 1 if a == s else 0."""
    storage = ReplayStorage(capacity=256, num_segments=1, write_batch=16, obs_shape=(2,))
    state = torch.arange(200) % 2
    action = (torch.arange(200) // 2) % 2
    reward = (state == action).float()
    if reward_nan:
        reward[:] = float("nan")
    obs = torch.nn.functional.one_hot(state, 2).float()
    storage.write(0, {"obs": obs, "action": action, "reward": reward, "next_obs": obs,
                      "discount": torch.zeros(200)})
    return storage


def _learner(tmp_path: Path, storage: ReplayStorage, **changes: object) -> tuple[Learner, ParameterStore, Counters]:
    settings = _settings(tmp_path, **changes)
    probe = build_network(settings.network, settings.obs_shape, settings.num_actions)
    params = ParameterStore(num_parameters(probe))
    counters = Counters(1)
    counters.env_steps[0] = 200
    return Learner(settings, storage, params, counters, queue.SimpleQueue()), params, counters


@pytest.mark.parametrize("changes", [{}, {"network": {**NETWORK, "dueling": True}},
                                     {"loss": "mse"}, {"prioritized": True}])
def test_learner_learns_the_bandit_q_values(tmp_path: Path, changes: dict) -> None:
    learner, params, _ = _learner(tmp_path, _bandit_storage(), **changes)
    for _ in range(300):
        assert learner.update()
    q = learner.q_net(torch.eye(2))
    torch.testing.assert_close(q, torch.eye(2), atol=0.05, rtol=0)
    actor_net = build_network(learner.s.network, (2,), 2)
    assert params.read_into(actor_net) == 300  # published every 5 updates, the last at 300
    torch.testing.assert_close(actor_net(torch.eye(2)), q.detach())


def test_hard_target_update_every_c_updates(tmp_path: Path) -> None:
    learner, _, _ = _learner(tmp_path, _bandit_storage(), target_update=10)
    initial = [p.clone() for p in learner.target_net.parameters()]
    for _ in range(9):
        learner.update()
    assert all(torch.equal(a, b) for a, b in zip(initial, learner.target_net.parameters()))
    learner.update()
    assert all(torch.equal(a, b) for a, b in zip(learner.q_net.parameters(), learner.target_net.parameters()))


def test_polyak_target_update_moves_part_way(tmp_path: Path) -> None:
    learner, _, _ = _learner(tmp_path, _bandit_storage(), target_update=1, target_tau=0.25)
    before = [p.clone() for p in learner.target_net.parameters()]
    learner.update()
    for old, new, online in zip(before, learner.target_net.parameters(), learner.q_net.parameters()):
        torch.testing.assert_close(new, old + 0.25 * (online - old))


def test_linear_lr_schedule_follows_env_steps(tmp_path: Path) -> None:
    learner, _, counters = _learner(tmp_path, _bandit_storage(), lr=1e-2, lr_schedule="linear", lr_final=1e-3)
    counters.env_steps[0] = 500  # half the budget of 1000
    learner.update()
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(5.5e-3)


def test_gradient_clipping_bounds_the_step(tmp_path: Path) -> None:
    clipped, _, _ = _learner(tmp_path, _bandit_storage(), max_grad_norm=1e-3, lr=1.0, adam_eps=1e8)
    before = torch.cat([p.detach().flatten().clone() for p in clipped.q_net.parameters()])
    clipped.update()
    after = torch.cat([p.detach().flatten() for p in clipped.q_net.parameters()])
    # with a huge Adam eps the step is ~ lr * grad / eps, so it is bounded by the clipped norm
    assert torch.linalg.vector_norm(after - before) <= 1e-3 / 1e8 * 1.01


def test_nan_loss_stops_or_skips_without_publishing(tmp_path: Path) -> None:
    learner, params, _ = _learner(tmp_path, _bandit_storage(reward_nan=True))
    learner.publish()
    published = params.flat.clone()
    with pytest.raises(NonFiniteLoss, match="at update 1"):
        learner.update()
    assert torch.equal(params.flat, published)
    skipping, params2, _ = _learner(tmp_path, _bandit_storage(reward_nan=True), nonfinite="skip")
    assert not skipping.update() and skipping.skipped == 1 and skipping.updates == 0


def test_updates_wait_for_data_and_follow_the_replay_ratio(tmp_path: Path) -> None:
    learner, _, counters = _learner(tmp_path, _bandit_storage(), replay_ratio=0.1, learning_starts=100)
    counters.env_steps[0] = 150  # 50 learnable steps at 0.1 updates per step
    done = 0
    while learner.data_allows_update() and learner.update():
        done += 1
    assert done == 6  # updates < 0.1 * 50 + 1
    empty, _, _ = _learner(tmp_path, ReplayStorage(256, 1, 16, (2,)), learning_starts=1)
    assert not empty.data_allows_update()

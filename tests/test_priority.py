"""Prioritized sampling: the sum tree, frequencies that follow priorities, IS weights,
priority updates, and no sampling of rows a writer may be overwriting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncql_cli.priority import PrioritizedSampler, SumTree
from asyncql_cli.replay import ReplayStorage


def _rows(ids: np.ndarray, priority: np.ndarray) -> dict[str, torch.Tensor]:
    ids_t = torch.as_tensor(ids, dtype=torch.float32)
    return {
        "obs": ids_t.unsqueeze(1).repeat(1, 3), "next_obs": (ids_t + 0.5).unsqueeze(1).repeat(1, 3),
        "action": torch.as_tensor(ids % 5, dtype=torch.int64), "reward": ids_t,
        "discount": torch.full((len(ids),), 0.9), "priority": torch.as_tensor(priority, dtype=torch.float32),
    }


def test_sum_tree_prefix_sums_and_updates() -> None:
    tree = SumTree(6)
    values = np.array([1.0, 0.0, 3.0, 2.0, 0.5, 4.0])
    tree.set(np.arange(6), values)
    assert tree.total == pytest.approx(values.sum())
    cumulative = np.cumsum(values)
    for mass in np.linspace(0, values.sum() - 1e-9, 200):
        expected = int(np.searchsorted(cumulative, mass, side="right"))
        assert tree.find(np.array([mass]))[0] == expected
    tree.set(np.array([2, 5]), np.array([0.0, 1.0]))
    assert tree.total == pytest.approx(values.sum() - 3.0 - 3.0)
    assert tree.get(np.array([0, 2, 5])).tolist() == [1.0, 0.0, 1.0]


def test_sampled_frequencies_match_priorities() -> None:
    storage = ReplayStorage(capacity=64, num_segments=2, write_batch=4, obs_shape=(3,))
    rng = np.random.default_rng(0)
    priorities = rng.uniform(0.1, 5.0, size=40)
    storage.write(0, _rows(np.arange(20), priorities[:20]))
    storage.write(1, _rows(np.arange(20, 40), priorities[20:]))
    alpha = 0.7
    sampler = PrioritizedSampler(storage, seed=1, alpha=alpha, priority_eps=1e-6)
    counts = np.zeros(40)
    draws = 0
    for _ in range(400):
        batch = sampler.sample(50, beta=0.5)
        ids = batch.reward.numpy().astype(int)
        assert torch.equal(batch.obs[:, 0], batch.reward) and torch.equal(batch.action, batch.reward.long() % 5)
        np.add.at(counts, ids, 1)
        draws += len(ids)
    expected = (priorities + 1e-6) ** alpha
    expected = expected / expected.sum() * draws
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80, chi2  # 39 dof: mean 39, p(chi2 > 80) ~ 1e-4


def test_importance_weights_follow_the_formula() -> None:
    storage = ReplayStorage(capacity=16, num_segments=1, write_batch=2, obs_shape=(3,))
    priorities = np.array([1.0, 2.0, 4.0, 8.0])
    storage.write(0, _rows(np.arange(4), priorities))
    sampler = PrioritizedSampler(storage, seed=0, alpha=1.0, priority_eps=0.0)
    batch = sampler.sample(64, beta=0.5)
    ids = batch.reward.numpy().astype(int)
    p = priorities / priorities.sum()
    raw = (4 * p[ids]) ** -0.5
    np.testing.assert_allclose(batch.weight.numpy(), raw / raw.max(), rtol=1e-5)


def test_priority_updates_change_the_distribution() -> None:
    storage = ReplayStorage(capacity=16, num_segments=1, write_batch=2, obs_shape=(3,))
    storage.write(0, _rows(np.arange(4), np.ones(4)))
    sampler = PrioritizedSampler(storage, seed=0, alpha=1.0, priority_eps=0.0)
    batch = sampler.sample(8, beta=0.4)
    logical = sampler.logical_of(batch.index)
    td = torch.where(batch.reward == 3, 100.0, 0.0)  # only row id 3 keeps a priority
    sampler.update_priorities(batch.index, td, logical)
    if not (batch.reward == 3).any():  # row 3 unsampled: it keeps priority 1, others 0
        sampler.update_priorities(batch.index, torch.zeros(8), logical)
    again = sampler.sample(32, beta=0.4)
    assert set(again.reward.tolist()) == {3.0}


def test_rows_a_writer_may_overwrite_are_never_sampled() -> None:
    segment_size, margin = 8, 2
    storage = ReplayStorage(capacity=segment_size, num_segments=1, write_batch=margin, obs_shape=(3,))
    storage.write(0, _rows(np.arange(10), np.ones(10)))  # wrapped: holds ids 2..9
    sampler = PrioritizedSampler(storage, seed=0, alpha=1.0, priority_eps=1e-6)
    seen = set()
    for _ in range(50):
        seen |= set(sampler.sample(16, beta=0.4).reward.long().tolist())
    # the next write (ids 10, 11) lands on the slots of ids 2 and 3: those are excluded
    assert seen == set(range(4, 10))

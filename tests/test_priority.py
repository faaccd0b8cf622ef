"""Prioritized sampling: the sum tree, frequencies that follow priorities, IS weights,
priority updates, and no sampling of rows a writer may be overwriting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from proc_utils import join_or_kill

from asyncql_cli.replay.prioritized import PrioritizedSampler, SumTree
from asyncql_cli.replay.transitions import ReplayStorage


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
    logical = batch.logical  # each row's logical position when drawn (row id i is at position i)
    assert logical.tolist() == batch.reward.long().tolist()
    td = torch.where(batch.reward == 3, 100.0, 0.0)  # only row id 3 keeps a priority
    sampler.update_priorities(batch.index, td, logical)
    if not (batch.reward == 3).any():  # row 3 unsampled: it keeps priority 1, others 0
        sampler.update_priorities(batch.index, torch.zeros(8), logical)
    again = sampler.sample(32, beta=0.4)
    assert set(again.reward.tolist()) == {3.0}
    state = sampler.state()  # what a replay snapshot keeps of the learned priorities
    assert state["slot_logical"][:4].tolist() == [0, 1, 2, 3]
    assert state["raw_priority"][:3].tolist() == [0.0, 0.0, 0.0]


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


def test_rows_a_write_reaches_while_gathering_are_redrawn() -> None:
    """A write committed between the draw and the re-read of the cursors may have reached the
    oldest drawn rows: they are drawn again, and each row's logical position is the drawn one."""
    segment_size, margin = 16, 4
    storage = ReplayStorage(capacity=segment_size, num_segments=1, write_batch=margin, obs_shape=(3,))
    storage.write(0, _rows(np.arange(16), np.ones(16)))  # logical positions 0..15 (row id = position)
    sampler = PrioritizedSampler(storage, seed=0, alpha=1.0, priority_eps=0.0)
    original = storage.gather
    calls = []

    def gather_during_a_write(slots: torch.Tensor) -> dict[str, torch.Tensor]:
        if not calls:  # positions 16..23 land on the slots of positions 0..7
            storage.write(0, _rows(np.arange(16, 24), np.full(8, 3.0)))
        calls.append(len(slots))
        return original(slots)

    storage.gather = gather_during_a_write
    batch = sampler.sample(64, beta=0.4)
    assert len(calls) >= 2 and sampler.redraws > 0, "the first gather overlapped a write but nothing was redrawn"
    ids = batch.reward.long()
    assert torch.equal(batch.obs[:, 0], batch.reward) and torch.equal(batch.action, ids % 5)
    assert torch.equal(batch.index, ids % segment_size)
    assert batch.logical.tolist() == ids.tolist()
    # the next write may reach positions up to 24 + 4 - 16 = 12: only 12..23 are safe
    assert set(ids.tolist()) <= set(range(12, 24))
    assert (batch.weight > 0).all() and float(batch.weight.max()) == 1.0


def test_a_writer_moving_on_between_rounds_leaves_every_weight_finite() -> None:
    """The interleaving that once turned a batch to NaN: rows kept from the first round lie in the
    window the writer moves into before the second round's ingest, so the tree now holds 0 for
    them. Their weights come from the probability they were drawn with: finite, positive."""
    segment_size, margin = 32, 4
    storage = ReplayStorage(capacity=segment_size, num_segments=1, write_batch=margin, obs_shape=(3,))
    storage.write(0, _rows(np.arange(32), np.ones(32)))
    sampler = PrioritizedSampler(storage, seed=3, alpha=1.0, priority_eps=0.0)
    original_gather, original_recheck = storage.gather, storage.recheck
    events: list[str] = []

    def gather(slots: torch.Tensor) -> dict[str, torch.Tensor]:
        if not events:  # during the first gather: positions 32..35 (some drawn rows become unsafe)
            storage.write(0, _rows(np.arange(32, 36), np.ones(4)))
            events.append("write during gather")
        return original_gather(slots)

    def recheck() -> np.ndarray:
        cursors = original_recheck()
        if len(events) == 1:  # after the first re-read, before the next ingest: positions 36..43
            storage.write(0, _rows(np.arange(36, 44), np.ones(8)))
            events.append("write between rounds")
        return cursors

    storage.gather, storage.recheck = gather, recheck
    batch = sampler.sample(64, beta=0.7)
    assert events == ["write during gather", "write between rounds"]
    ids = batch.reward.long()
    # kept from the first round and now inside the writer's window (44 + 4 - 32 = 16 > position):
    in_window = (ids >= 12) & (ids < 16)
    assert in_window.any(), "no kept row fell into the writer's new window: the interleaving did not happen"
    assert (sampler.tree.get(batch.index.numpy()[in_window.numpy()]) == 0).all()
    assert torch.isfinite(batch.weight).all() and (batch.weight > 0).all() and float(batch.weight.max()) == 1.0
    # and a learner's new priorities do not give those slots back their mass
    sampler.update_priorities(batch.index, torch.full((64,), 5.0), batch.logical)
    assert (sampler.tree.get(batch.index.numpy()[in_window.numpy()]) == 0).all()


@pytest.mark.slow
@pytest.mark.stress
def test_concurrent_writers_never_yield_torn_rows_or_nonfinite_weights() -> None:
    """Two writer processes lap their rings while this process samples with priorities and
    updates them, as a learner does; the race window must really be hit (redraws > 0)."""
    import multiprocessing as mp
    import time

    from replay_workers import assert_rows_whole, continuous_writer, decode_id

    seg_size, write_batch, writers = 64, 8, 2
    storage = ReplayStorage(seg_size * writers, writers, write_batch, (16,))
    stop = torch.zeros(1, dtype=torch.int64).share_memory_()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=continuous_writer, args=(storage, w, writers, stop, 20 + w, 2_000_000), daemon=True)
             for w in range(writers)]
    sampler = PrioritizedSampler(storage, seed=5, alpha=0.6, priority_eps=1e-6)
    rng = np.random.default_rng(0)
    batches = 0
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + 240  # a guard against a hang only
        while (storage.committed() < 4 * seg_size).any():
            assert all(p.is_alive() for p in procs) and time.monotonic() < deadline, "writers did not start"
            time.sleep(0.01)
        while batches < 3000 or sampler.redraws == 0 or (storage.committed() < 100 * seg_size).any():
            assert all(p.is_alive() for p in procs), "a writer died"
            assert time.monotonic() < deadline, f"too slow: {batches} batches, {sampler.redraws} redraws"
            before = storage.committed()
            batch = sampler.sample(32, beta=0.5)
            if batch is None:
                continue
            after = storage.committed()
            ids = assert_rows_whole(batch)
            writer, pos = decode_id(ids, writers)
            segment = batch.index // seg_size
            assert (writer == segment).all() and (torch.from_numpy(batch.logical) == pos).all()
            assert (pos.numpy() < after[segment.numpy()]).all(), "an uncommitted row was sampled"
            assert (pos.numpy() >= before[segment.numpy()] - (seg_size - write_batch)).all(), "an overwritable row"
            assert torch.isfinite(batch.weight).all() and (batch.weight > 0).all()
            sampler.update_priorities(batch.index, torch.as_tensor(rng.exponential(size=32)), batch.logical)
            batches += 1
    finally:
        stop[0] = 1
        join_or_kill(procs)
    assert sampler.redraws > 0

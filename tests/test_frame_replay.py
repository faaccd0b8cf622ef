"""Frame-deduplicated replay: every frame stored once, and the transitions rebuilt from it are
exactly those the env produced, across episode ends, while actors write concurrently.

The env (tests/frame_envs.py) writes its position into every frame, so a rebuilt stack can be
checked against what a `FrameStackObservation` must have shown; one test also compares against
a recording of the real vector env the actor stepped.
"""

from __future__ import annotations

import time

import frame_envs
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from frame_envs import STACK, TIME_LIMIT, episode_length, frame_writer, make_actor, reward_of
from proc_utils import join_or_kill
from test_nstep import reference_transitions, run_recorded

from asyncql_cli.checkpoint import load_replay_into, save_replay
from asyncql_cli.config.schema import AtariConfig
from asyncql_cli.errors import BadInput
from asyncql_cli.replay.frames import FrameStorage, episode_id
from asyncql_cli.replay.prioritized import PrioritizedSampler
from asyncql_cli.replay.transitions import ReplayStorage
from asyncql_cli.replay.uniform import UniformSampler

GAMMA = 0.9
OBS_SHAPE = frame_envs.OBS_SHAPE


def actor_settings(actor_id: int, num_actors: int, envs: int, n_step: int, priorities: bool = False):
    return frame_envs.actor_settings(actor_id, num_actors, envs, n_step, GAMMA, priorities)


def expected_stack(episode: int, step: int, tag: int) -> tuple[np.ndarray, ...]:
    """Positions (step, episode, tag) of the frames a reset-padded stack holds at `step`."""
    return tuple(np.array([max(0, step - j), episode % 256, tag]) for j in range(STACK - 1, -1, -1))


def check_transition(obs: np.ndarray, action: int, ret: float, next_obs: np.ndarray, discount: float,
                     n_step: int) -> None:
    """One rebuilt transition against what the env's rules say it must be."""
    step, episode, tag = (int(v) for v in obs[-1, 0, :3])
    for frame, (want_step, want_episode, want_tag) in zip(obs, expected_stack(episode, step, tag)):
        assert (int(frame[0, 0]), int(frame[0, 1]), int(frame[0, 2])) == (want_step, want_episode, want_tag)
    next_step = int(next_obs[-1, 0, 0])
    k = next_step - step
    assert 1 <= k <= n_step
    for frame, (want_step, want_episode, want_tag) in zip(next_obs, expected_stack(episode, next_step, tag)):
        assert (int(frame[0, 0]), int(frame[0, 1]), int(frame[0, 2])) == (want_step, want_episode, want_tag)
    assert 0 <= action < 3
    assert ret == pytest.approx(sum(GAMMA**i * reward_of(episode, step + i) for i in range(k)), abs=1e-5)
    terminated = next_step == episode_length(episode) and next_step <= TIME_LIMIT
    ended = terminated or next_step == TIME_LIMIT
    assert k == n_step or ended, "a short bootstrap only at an episode end"
    assert discount == pytest.approx(0.0 if terminated else GAMMA**k, abs=1e-6)


def test_replay_of_a_million_atari_transitions_fits_in_1_1_frames_each():
    frame = 84 * 84
    per_row = FrameStorage.bytes_needed(1_000_000, (84, 84)) / 1_000_000
    assert per_row <= 1.1 * frame
    storage = FrameStorage(10_000, 4, 64, (4, 84, 84), n_step=3)  # what is really allocated
    held = sum(t.numel() * t.element_size() for t in (
        storage.frame, storage.action, storage.reward, storage.discount, storage.bootstrap,
        storage.episode_step, storage.episode, storage.priority))
    assert held == FrameStorage.bytes_needed(10_000, (84, 84))


def record_actor(settings, storage: FrameStorage, steps: int) -> list[dict]:
    return run_recorded(make_actor(settings, storage), steps)


def compare_with_recording(storage: FrameStorage, steps: list[dict], envs: int, n_step: int) -> None:
    """Each env's stream: one row per transition the env produced plus one per episode end, and
    every transition rebuilt from it equal to the recorded one (the newest few may wait)."""
    expected = reference_transitions(steps, n_step, GAMMA)
    for e in range(envs):
        want = sorted((row for row in expected if row[1] == e), key=lambda row: row[2])
        count = storage.cursor(e)
        slots = torch.arange(e * storage.segment_size, e * storage.segment_size + count)
        finals = int((storage.action[slots] < 0).sum())
        ends = sum(int(s["terminated"][e] or s["truncated"][e]) for s in steps)
        assert finals == ends, "one final row per finished episode"
        assert count == len(want) + ends, "one row per transition plus the final rows: no frame stored twice"
        # every row carries its episode's id: this stream's, counting the episodes before it
        final = (storage.action[slots] < 0).long()
        episodes_before = (final.cumsum(0) - final).tolist()
        assert storage.episode[slots].tolist() == [episode_id(0, e, n) for n in episodes_before]
        usable = slots[~torch.from_numpy(storage.unusable(slots))]
        # rows whose s_{t+k} frame is not written yet (the unfinished episode's last ones) wait
        assert len(want) - n_step <= usable.numel() <= len(want)
        rows = storage.gather(usable)
        for i in range(usable.numel()):
            _, _, _, obs, action, ret, next_obs, discount = want[i]
            np.testing.assert_array_equal(rows["obs"][i].numpy(), obs)
            np.testing.assert_array_equal(rows["next_obs"][i].numpy(), next_obs)
            assert int(rows["action"][i]) == action
            assert float(rows["reward"][i]) == pytest.approx(ret, abs=1e-5)
            assert float(rows["discount"][i]) == pytest.approx(discount, abs=1e-6)


@pytest.mark.parametrize("n_step", [1, 3])
def test_rebuilt_transitions_equal_what_the_vector_env_returned(n_step):
    envs = 3
    storage = FrameStorage(3 * 512, envs, 8, OBS_SHAPE, n_step)
    steps = record_actor(actor_settings(0, 1, envs, n_step), storage, 150)
    assert sum(int(s["terminated"].sum()) for s in steps) > 0 and sum(int(s["truncated"].sum()) for s in steps) > 0
    compare_with_recording(storage, steps, envs, n_step)
    for e in range(envs):  # and each rebuilt transition also obeys the env's own rules
        slots = torch.arange(e * storage.segment_size, e * storage.segment_size + storage.cursor(e))
        usable = slots[~torch.from_numpy(storage.unusable(slots))]
        rows = storage.gather(usable)
        for i in range(usable.numel()):
            check_transition(rows["obs"][i].numpy(), int(rows["action"][i]), float(rows["reward"][i]),
                             rows["next_obs"][i].numpy(), float(rows["discount"][i]), n_step)


def test_breakout_frames_rebuilt_from_the_replay_equal_the_frames_the_env_produced():
    """The real Atari chain (episodic life, so a boundary at every lost life; fire on reset)."""
    envs, n_step = 2, 3
    atari = AtariConfig(noop_max=0)
    storage = FrameStorage(envs * 2048, envs, 8, (4, 84, 84), n_step)
    settings = frame_envs.actor_settings(0, 1, envs, n_step, GAMMA, env_id="ALE/Breakout-v5", atari=atari,
                                         num_actions=4)
    steps = record_actor(settings, storage, 400)
    assert sum(int(s["terminated"].sum()) for s in steps) >= 2, "lost lives end learning episodes"
    compare_with_recording(storage, steps, envs, n_step)
    rewards = np.concatenate([s["reward"] for s in steps])
    assert set(np.unique(rewards)) <= {0.0, 1.0}, "training rewards are clipped"


def fill(storage: FrameStorage, num_actors: int, envs: int, n_step: int, steps: int,
         priorities: bool = False) -> None:
    for actor_id in range(num_actors):
        actor = make_actor(actor_settings(actor_id, num_actors, envs, n_step, priorities), storage)
        for _ in range(steps):
            actor.step()
        actor.flush()
        actor.close()


def test_uniform_sampler_draws_only_whole_transitions_after_wrap_around():
    n_step = 3
    storage = FrameStorage(2 * 2 * 64, 4, 8, OBS_SHAPE, n_step)  # 64 rows per stream: wraps many times
    fill(storage, 2, 2, n_step, 400)
    assert int(storage.committed().min()) > 4 * storage.segment_size
    sampler = UniformSampler(storage, seed=0)
    seen = set()
    for _ in range(50):
        batch = sampler.sample(32)
        assert (batch.action >= 0).all(), "a final row (no action) was sampled"
        for i in range(32):
            check_transition(batch.obs[i].numpy(), int(batch.action[i]), float(batch.reward[i]),
                             batch.next_obs[i].numpy(), float(batch.discount[i]), n_step)
        seen.update(batch.index.tolist())
    # and the window is the whole sampleable ring, not a corner of it
    window = int(sampler._window(storage.committed()).sum())
    assert len(seen) > 0.8 * window


def test_prioritized_sampler_on_frames_follows_priorities_and_skips_final_rows():
    n_step = 2
    storage = FrameStorage(4 * 1024, 4, 8, OBS_SHAPE, n_step)
    fill(storage, 2, 2, n_step, 300, priorities=True)
    finals = storage.action < 0
    written = storage.episode_step >= 0
    assert (storage.priority[finals & written] == 0).all(), "the actor gives final rows priority 0"
    # replace the actor's priorities by a known pattern: rows with even step 4x the odd ones
    even = (storage.episode_step % 2 == 0)
    storage.priority[:] = torch.where(even, 4.0, 1.0)
    storage.priority[finals] = 0.0
    sampler = PrioritizedSampler(storage, seed=1, alpha=1.0, priority_eps=0.0)
    counts = {True: 0, False: 0}
    for _ in range(100):
        batch = sampler.sample(64, beta=0.4)
        assert (batch.action >= 0).all()
        for i in range(8):
            check_transition(batch.obs[i].numpy(), int(batch.action[i]), float(batch.reward[i]),
                             batch.next_obs[i].numpy(), float(batch.discount[i]), n_step)
        for parity in (storage.episode_step[batch.index] % 2 == 0).tolist():
            counts[parity] += 1
    rows_even = int((even & written & ~finals).sum())
    rows_odd = int((~even & written & ~finals).sum())
    want = 4 * rows_even / (4 * rows_even + rows_odd)
    assert counts[True] / (counts[True] + counts[False]) == pytest.approx(want, abs=0.03)


@pytest.mark.slow
@pytest.mark.stress
def test_concurrent_actor_processes_never_yield_a_torn_or_mixed_transition():
    n_step, num_actors, envs = 3, 2, 2
    storage = FrameStorage(num_actors * envs * 64, num_actors * envs, 8, OBS_SHAPE, n_step)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    writers = [ctx.Process(target=frame_writer, args=(storage, i, num_actors, envs, n_step, GAMMA, stop), daemon=True)
               for i in range(num_actors)]
    for proc in writers:
        proc.start()
    try:
        sampler = UniformSampler(storage, seed=3)
        more_batches, checked = 200, 0
        while int(storage.committed().min()) < 4 * storage.segment_size:  # until every ring has lapped often
            assert all(proc.is_alive() for proc in writers), "a writer died"
            time.sleep(0.002)  # leave the writers most of the CPU
            batch = sampler.sample(16)
            if batch is None:
                continue
            for i in range(16):
                check_transition(batch.obs[i].numpy(), int(batch.action[i]), float(batch.reward[i]),
                                 batch.next_obs[i].numpy(), float(batch.discount[i]), n_step)
            checked += 1
        for _ in range(more_batches):
            batch = sampler.sample(16)
            for i in range(16):
                check_transition(batch.obs[i].numpy(), int(batch.action[i]), float(batch.reward[i]),
                                 batch.next_obs[i].numpy(), float(batch.discount[i]), n_step)
            checked += 1
        assert checked > more_batches
    finally:
        stop.set()
        join_or_kill(writers)
    assert all(proc.exitcode == 0 for proc in writers), [proc.exitcode for proc in writers]


def test_rows_left_by_an_actor_that_died_mid_episode_are_never_sampled():
    n_step = 3
    storage = FrameStorage(1 * 256, 1, 8, OBS_SHAPE, n_step)
    first = make_actor(actor_settings(0, 1, 1, n_step), storage)
    for _ in range(9):  # the first episode is 3 steps long, the second 10: stop in the middle of it
        first.step()
    first.flush()
    first.close()
    cut = storage.cursor(0)
    restarted = make_actor(actor_settings(0, 1, 1, n_step), storage)  # a restart: a new episode
    for _ in range(40):
        restarted.step()
    restarted.flush()
    restarted.close()
    slots = torch.arange(storage.cursor(0))
    bad = storage.unusable(slots)
    orphans = [i for i in range(cut) if int(storage.action[i]) >= 0 and bad[i]]
    assert orphans, "the cut episode's last rows have no s_{t+k} of their episode"
    sampler = UniformSampler(storage, seed=5)
    for _ in range(30):
        batch = sampler.sample(16)
        assert not set(batch.index.tolist()) & set(orphans)
        for i in range(16):
            check_transition(batch.obs[i].numpy(), int(batch.action[i]), float(batch.reward[i]),
                             batch.next_obs[i].numpy(), float(batch.discount[i]), n_step)


def test_saved_frame_replay_refills_a_new_storage_with_the_same_transitions(tmp_path):
    n_step = 3
    storage = FrameStorage(2 * 2 * 128, 4, 8, OBS_SHAPE, n_step)
    fill(storage, 2, 2, n_step, 300)  # wrapped: each ring holds only its newest rows
    path = tmp_path / "replay.pt"
    saved = save_replay(storage, path)
    assert saved == storage.size()
    restored = FrameStorage(2 * 2 * 128, 4, 8, OBS_SHAPE, n_step)
    assert load_replay_into(restored, path) == saved
    for segment in range(4):
        old = torch.arange(storage.cursor(segment) - storage.segment_size, storage.cursor(segment))
        old_slots = segment * storage.segment_size + old % storage.segment_size
        new_slots = segment * restored.segment_size + torch.arange(storage.segment_size)
        keep = ~torch.from_numpy(storage.unusable(old_slots))
        assert keep.sum() > storage.segment_size // 2
        np.testing.assert_array_equal(restored.unusable(new_slots), ~keep.numpy())
        before, after = storage.gather(old_slots[keep]), restored.gather(new_slots[keep])
        for name in before:
            assert torch.equal(before[name], after[name]), name
        for name in storage.columns:  # the episode ids and steps too: the restored rows check alike
            assert torch.equal(getattr(storage, name)[old_slots], getattr(restored, name)[new_slots]), name
    with pytest.raises(BadInput, match="another kind of replay"):
        load_replay_into(ReplayStorage(64, 1, 8, (4,)), path)

"""Resume keeps what a run learned: the replay's priorities, different batches for each learner of
each generation, exact episode boundaries in a frame replay folded onto fewer streams, and every
mode continues in place (independent learners, actor-learners, a changed number of actors,
prioritized replay through the CLI, which must also learn CartPole end to end)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config

from asyncql_cli.checkpoint import load_replay_into, save_replay
from asyncql_cli.config.loading import load_config
from asyncql_cli.envs.make import inspect_env
from asyncql_cli.replay.frames import FrameStorage, episode_id
from asyncql_cli.replay.prioritized import PrioritizedSampler
from asyncql_cli.replay.transitions import ReplayStorage
from asyncql_cli.replay.uniform import UniformSampler
from asyncql_cli.runtime.wiring import Wiring

FAST = ["parallelism.envs_per_actor=4", "train.progress=plain", "eval.interval_seconds=2",
        "checkpoint.interval_seconds=2"]


def _rows(ids: np.ndarray) -> dict[str, torch.Tensor]:
    value = torch.as_tensor(ids, dtype=torch.float32)
    return {"obs": value[:, None].repeat(1, 3), "next_obs": value[:, None].repeat(1, 3) + 0.5,
            "action": torch.as_tensor(ids % 3), "reward": value, "discount": torch.full((len(ids),), 0.9)}


# ------------------------------------------------------------------ units
def test_the_priorities_a_learner_gave_come_back_with_the_replay(tmp_path: Path) -> None:
    storage = ReplayStorage(64, 2, 8, (3,))
    for segment in range(2):
        rows = _rows(np.arange(40) + 100 * segment)
        rows["priority"] = torch.full((40,), 0.5)  # the actors' initial priorities
        storage.write(segment, rows)
    sampler = PrioritizedSampler(storage, seed=0, alpha=0.6, priority_eps=1e-6)
    batch = sampler.sample(16, beta=0.4)
    learned = torch.arange(1, 17, dtype=torch.float32) * 3.0
    sampler.update_priorities(batch.index, learned, batch.logical)
    path = tmp_path / "replay.pt"
    save_replay(storage, path, sampler.state())
    restored = ReplayStorage(64, 2, 8, (3,))
    assert load_replay_into(restored, path) == storage.size()
    by_id = {int(i): float(p) for i, p in zip(batch.reward, learned)}  # the last priority given wins
    for slot in range(restored.capacity):
        row_id = int(restored.reward[slot])
        expected = by_id.get(row_id, 0.5)
        assert float(restored.priority[slot]) == pytest.approx(expected), row_id
    # and a new learner's sum tree starts from them, not from 1 or the initial ones
    again = PrioritizedSampler(restored, seed=1, alpha=0.6, priority_eps=1e-6)
    again.ingest()
    assert again.raw_priority.max() == pytest.approx(float(learned.max()))


def test_every_learner_of_every_generation_draws_its_own_batches(tmp_path: Path) -> None:
    config = load_config(compose_config(["parallelism.num_learners=2", "parallelism.learner_sharing=shared"]))
    spec = inspect_env(config.env, config.network.name)
    seeds = {(generation, index): Wiring(config, spec, tmp_path, generation).learner_settings(index).sampler_seed
             for generation in (0, 1, 2) for index in (0, 1)}
    assert len(set(seeds.values())) == len(seeds)
    storage = ReplayStorage(512, 1, 8, (3,))
    storage.write(0, _rows(np.arange(512)))
    draws = {key: UniformSampler(storage, seed).sample(32).reward.tolist() for key, seed in seeds.items()}
    assert draws[(1, 0)] != draws[(1, 1)]  # two resumed Hogwild learners: different batches
    assert draws[(1, 0)] != draws[(0, 0)]  # and not the original run's batches either
    same = Wiring(config, spec, tmp_path, 1).learner_settings(1).sampler_seed
    assert same == seeds[(1, 1)]  # reproducible


def _frame_rows(stream: int, episode: int, steps: range, final: bool = False) -> dict[str, torch.Tensor]:
    count = len(steps)
    rows = {"frame": torch.full((count, 4, 4), stream * 50 + episode, dtype=torch.uint8),
            "action": torch.ones(count, dtype=torch.int64), "reward": torch.ones(count),
            "discount": torch.full((count,), 0.9), "bootstrap": torch.ones(count, dtype=torch.int64),
            "episode_step": torch.as_tensor(list(steps), dtype=torch.int32),
            "episode": torch.full((count,), episode_id(0, stream, episode), dtype=torch.int64)}
    if final:
        rows["action"][-1], rows["bootstrap"][-1] = -1, 0
    return rows


def test_a_seam_between_folded_streams_never_passes_for_one_episode(tmp_path: Path) -> None:
    """Stream 0 holds steps 0..9 of an episode; stream 1 holds steps 10..19 of another one. Folded
    into one segment on resume, step arithmetic alone would take stream 1's first rows for the
    continuation of stream 0's episode; the episode ids do not."""
    shape = (4, 4, 4)  # stack of 4 frames of 4x4
    storage = FrameStorage(2 * 64, 2, 4, shape, n_step=1)
    storage.write(0, _frame_rows(0, 7, range(0, 10)))
    storage.write(1, _frame_rows(1, 3, range(10, 20)))
    save_replay(storage, tmp_path / "replay.pt")
    folded = FrameStorage(128, 1, 4, shape, n_step=1)
    assert load_replay_into(folded, tmp_path / "replay.pt") == 20
    flags = folded.unusable(torch.arange(20))
    # row 9 (s_{t+1} would be the other stream's row), rows 10..12 (their stacks would reach into
    # the other stream), row 19 (its s_{t+1} is not written): refused; the rest are transitions
    assert flags.tolist() == [False] * 9 + [True] * 4 + [False] * 6 + [True]
    same_ids = FrameStorage(128, 1, 4, shape, n_step=1)
    load_replay_into(same_ids, tmp_path / "replay.pt")
    same_ids.episode.fill_(5)  # what an arithmetic-only check sees
    assert same_ids.unusable(torch.arange(20)).tolist() == [False] * 19 + [True]
    sampler = UniformSampler(folded, seed=0)
    drawn = torch.cat([sampler.sample(32).index for _ in range(20)])
    assert not set(drawn.tolist()) & {9, 10, 11, 12, 19}


# ------------------------------------------------------------------ through the CLI
def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asyncql_cli", "train", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def _resume_twice(tmp_path: Path, first: list[str], then: list[str]) -> tuple[dict, dict, str]:
    run_dir = tmp_path / "run"
    done = _train(tmp_path, *FAST, *first, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    before = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    again = _train(tmp_path, f"resume={run_dir}", *then)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generation"] == 1 and after["generation"] == 1
    assert after["updates"] > before["updates"] and after["env_steps"] > before["env_steps"]
    return before, after, (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_independent_learners_each_continue_from_their_own_checkpoint(tmp_path: Path) -> None:
    before, after, log = _resume_twice(tmp_path, ["parallelism.num_learners=2", "train.total_env_steps=3000"],
                                       ["train.total_env_steps=5000"])
    second = torch.load(tmp_path / "run" / "checkpoints" / "last.learner1.pt", weights_only=True)
    assert second["learner_index"] == 1 and second["generation"] == 1
    assert all(a > b for a, b in zip(after["learner_updates"], before["learner_updates"]))
    assert f"resuming at {before['env_steps']} env steps" in log


@pytest.mark.slow
def test_actor_learners_continue_the_shared_network(tmp_path: Path) -> None:
    mode = ["algo.mode=actor_learner", "buffer=none", "exploration.schedule=mnih2016", "algo.lr=1e-3"]
    before, after, _ = _resume_twice(tmp_path, [*mode, "train.total_env_steps=3000"], ["train.total_env_steps=5000"])
    assert len(after["learner_updates"]) == 2 and sum(after["learner_updates"]) == after["updates"]
    assert not torch.equal(before["q_net"]["advantage.weight"], after["q_net"]["advantage.weight"])


@pytest.mark.slow
def test_a_run_resumed_with_more_actors_keeps_its_replay_and_counts(tmp_path: Path) -> None:
    before, after, log = _resume_twice(
        tmp_path, ["parallelism.num_actors=2", "train.total_env_steps=3000", "checkpoint.save_replay=true"],
        ["parallelism.num_actors=3", "train.total_env_steps=5000"])
    restored = int(log.split(" replay rows restored")[0].rsplit(", ", 1)[1])
    assert restored >= 2000  # the first generation's rows, folded onto three segments
    assert after["env_steps"] >= 5000 and after["config"]["parallelism"]["num_actors"] == 3


@pytest.mark.slow
def test_prioritized_replay_learns_cartpole_and_resumes_with_its_priorities(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _train(tmp_path, "buffer=prioritized", "train.total_env_steps=20000", "checkpoint.save_replay=true",
                  "train.progress=plain", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_eval_return"] >= 200, summary  # CartPole's defaults with prioritized replay learn
    replay = torch.load(run_dir / "checkpoints" / "replay.pt", weights_only=True)
    learned = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["sampler"]
    assert (learned["raw_priority"] > 0).any()
    # rows saved with the priority the learner last gave them, not all alike
    assert float(replay["priority"].std()) > 0 and not torch.all(replay["priority"] == 1.0)
    again = _train(tmp_path, f"resume={run_dir}", "train.total_env_steps=22000")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["generation"] == 1


def test_settings_carry_the_generation_into_the_frame_replay_ids(tmp_path: Path) -> None:
    config = load_config(compose_config([]))
    spec = inspect_env(config.env, config.network.name)
    settings = Wiring(config, spec, tmp_path, generation=3).actor_settings(1)
    assert settings.generation == 3
    assert Wiring(config, spec, tmp_path, generation=0).actor_settings(1).seed != settings.seed  # new episodes

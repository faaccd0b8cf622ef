"""The asynchronous Q-learning family, each through the real CLI with real processes:
independent learners (K networks, one replay), Hogwild-shared learners (one network
written by K processes, shared Adam moments) and Mnih et al. 2016 actor-learners."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from proc_utils import descendants, roles, start_train, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow

COMMON = ["train.progress=plain", "eval.interval_seconds=2", "parallelism.envs_per_actor=4"]


def _run(tmp_path: Path, *args: str, expect_roles: set[str]) -> tuple[Path, dict[str, int]]:
    run_dir = tmp_path / "run"
    proc = start_train([*COMMON, *args, f"hydra.run.dir={run_dir}"], tmp_path)
    seen: dict[str, int] = {}
    together = wait_for(lambda: seen.update(roles(proc.pid)) or expect_roles <= set(roles(proc.pid)), timeout=90)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert together, (seen, output[-2000:])
    assert descendants(proc.pid) == {}
    return run_dir, seen


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _points(run_dir: Path, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)} if tag in events.Tags()["scalars"] else {}


def _weights(path: Path) -> torch.Tensor:
    state = torch.load(path, weights_only=True)
    return torch.cat([t.flatten() for t in state["q_net"].values()])


def test_independent_learners_train_two_different_networks_from_one_replay(tmp_path: Path) -> None:
    # one update per env step for each network, so both have time to learn within 16k steps
    run_dir, _ = _run(tmp_path, "parallelism.num_learners=2", "train.total_env_steps=16000",
                      "algo.replay_ratio=1.0", "algo.batch_size=64",
                      expect_roles={"learner-0", "learner-1", "actor-0", "actor-1"})
    first, second = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.learner1.pt"
    assert not torch.allclose(_weights(first), _weights(second))
    states = [torch.load(p, weights_only=True) for p in (first, second)]
    assert [s["learner_index"] for s in states] == [0, 1]
    assert all(s["updates"] > 500 for s in states)
    scalars = _scalars(run_dir)
    for index in (0, 1):
        evals = scalars[f"learner{index}/eval_mean_return"]
        assert max(evals) >= 150, (index, evals)  # both networks learned (a random policy scores ~20)
        assert f"learner{index}/loss" in scalars
    # each evaluation's run score is the better network's; a score that reached the solved return
    # was replaced by its 100-episode confirmation, and the best of those scores is the summary's
    per_learner = [_points(run_dir, f"learner{i}/eval_mean_return") for i in (0, 1)]
    scores = _points(run_dir, "eval/mean_return")
    for step, value in scores.items():
        assert value == pytest.approx(max(p[step] for p in per_learner if step in p))
    scores.update(_points(run_dir, "eval/confirmed_mean_return"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_eval_return"] == pytest.approx(max(scores.values()))


def test_shared_learners_write_one_network_concurrently(tmp_path: Path) -> None:
    # ratio and batch pinned (not the env file's tuning): 2,000 updates to share within 5,000 env steps
    run_dir, _ = _run(tmp_path, "parallelism.num_learners=2", "parallelism.learner_sharing=shared",
                      "train.total_env_steps=5000", "algo.replay_ratio=0.5", "algo.batch_size=64",
                      expect_roles={"learner-0", "learner-1"})
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    per_learner = state["learner_updates"]
    assert len(per_learner) == 2 and min(per_learner) > 200
    assert state["updates"] == sum(per_learner)
    # one set of Adam moments stepped by both processes (Hogwild may drop a few increments)
    steps = [float(s["step"]) for s in state["optimizer"]["state"].values()]
    assert all(step > max(per_learner) * 1.2 for step in steps), (steps, per_learner)
    assert not (run_dir / "checkpoints" / "last.learner1.pt").exists()
    assert "learner1/loss" in _scalars(run_dir)


def test_actor_learners_update_one_shared_network_without_replay(tmp_path: Path) -> None:
    run_dir, _ = _run(tmp_path, "algo.mode=actor_learner", "buffer=none", "exploration.schedule=mnih2016",
                      "parallelism.num_actors=2", "parallelism.envs_per_actor=1", "algo.t_max=5",
                      "train.total_env_steps=15000", "algo.lr=1e-3",
                      expect_roles={"actor-learner-0", "actor-learner-1"})
    scalars = _scalars(run_dir)
    for tag in ("train/episode_return", "learner/loss", "learner0/loss", "learner1/loss", "eval/mean_return",
                "actor/policy_lag", "replay/size"):
        assert tag in scalars, tag
    assert set(scalars["replay/size"]) == {0.0}  # no replay at all
    assert all(loss == loss and abs(loss) < 1e6 for loss in scalars["learner/loss"])
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    # both processes applied gradients to the one network and its one set of Adam moments
    assert min(state["learner_updates"]) > 100 and state["updates"] == sum(state["learner_updates"])
    steps = [float(s["step"]) for s in state["optimizer"]["state"].values()]
    assert all(step > max(state["learner_updates"]) for step in steps), steps
    # how well this mode learns is measured by benchmarks/modes.py (CartPole: 500 over 100 episodes)


@pytest.mark.parametrize("mode", ["replay", "actor_learner"])
def test_a_run_ends_within_one_vector_step_per_actor_of_its_budget(tmp_path: Path, mode: str) -> None:
    # random actions on CartPole run far faster than the supervisor polls: the actors must stop
    # themselves at the budget (before this, 3,000 env steps ended at ~4,000)
    actors, envs, budget = 2, 4, 3000
    extra = ["algo.mode=actor_learner", "buffer=none"] if mode == "actor_learner" else []
    expect = {f"actor-learner-{i}" for i in range(actors)} if extra else {"learner-0", "actor-0", "actor-1"}
    run_dir, _ = _run(tmp_path, *extra, f"parallelism.num_actors={actors}", f"parallelism.envs_per_actor={envs}",
                      f"train.total_env_steps={budget}", "train.learning_starts=500", expect_roles=expect)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "budget"
    assert budget <= summary["env_steps"] < budget + actors * envs, summary
    assert summary["updates"] > 0


def test_mnih_final_epsilons_are_drawn_per_process_and_annealed() -> None:
    import queue

    import numpy as np

    from asyncql_cli.algo.exploration import draw_final_epsilon
    from asyncql_cli.config.schema import ActorConfig, EnvConfig, ExplorationConfig, NetworkConfig
    from asyncql_cli.envs.make import EnvSpec
    from asyncql_cli.shm.counters import Counters
    from asyncql_cli.workers.actor import Actor, ActorSettings

    exploration = ExplorationConfig(schedule="mnih2016", linear_start=1.0, linear_end=0.05, linear_steps=1000)
    base = ActorSettings(
        actor_id=0, num_actors=1, envs_per_actor=1, env=EnvSpec(EnvConfig(id="CartPole-v1"), (4,), "float32", 2),
        network=NetworkConfig(hidden=[8]), exploration=exploration, acting=ActorConfig(write_batch=8),
        gamma=0.99, n_step=1, seed=0, replay_ratio=1.0, learning_starts=0,
    )
    draws = [draw_final_epsilon(np.random.default_rng(seed), (0.1, 0.01, 0.5), (0.4, 0.3, 0.3))
             for seed in range(4000)]
    share = {eps: draws.count(eps) / len(draws) for eps in (0.1, 0.01, 0.5)}
    assert abs(share[0.1] - 0.4) < 0.03 and abs(share[0.01] - 0.3) < 0.03 and abs(share[0.5] - 0.3) < 0.03
    counters = Counters(1)
    actor = Actor(base, None, None, counters, queue.SimpleQueue())
    assert actor.final_eps in (0.1, 0.01, 0.5)
    assert actor.epsilons()[0] == pytest.approx(1.0)  # no env steps yet: linear_start
    counters.set_env_steps(0, 500)
    assert actor.epsilons()[0] == pytest.approx((1.0 + actor.final_eps) / 2)
    counters.set_env_steps(0, 5000)
    assert actor.epsilons()[0] == pytest.approx(actor.final_eps)


def test_resume_of_shared_learners(tmp_path: Path) -> None:
    run_dir, _ = _run(tmp_path, "parallelism.num_learners=2", "parallelism.learner_sharing=shared",
                      "train.total_env_steps=3000", expect_roles={"learner-0", "learner-1"})
    before = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    resumed = subprocess.run(
        [sys.executable, "-m", "asyncql_cli", "train",
         f"resume={run_dir}", "train.total_env_steps=5000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    after = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert after["updates"] > before["updates"] and after["env_steps"] >= 5000
    assert all(a >= b for a, b in zip(after["learner_updates"], before["learner_updates"]))

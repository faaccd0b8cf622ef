"""Toy-text envs train: their Discrete (and Tuple) observations are flattened into one-hot vectors
(gymnasium's FlattenObservation), so `asyncql train env=gym env.id=<toy text id>` runs and learns.
A user's override of an open dictionary (`env.kwargs.<key>`) needs no `+`."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import gymnasium as gym
import pytest
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asyncql_cli.config.schema import EnvConfig
from asyncql_cli.envs.make import inspect_env, make_env

pytestmark = pytest.mark.slow

SERIAL = ["parallelism=serial", "train.progress=none", "train.learning_starts=500", "eval.interval_seconds=1",
          "network.hidden=[64]", "exploration.schedule=linear"]
RANDOM_TAXI_RETURN = -700  # a uniformly random Taxi-v4 policy makes illegal moves: about -745 per episode


@pytest.mark.parametrize(("env_id", "shape"), [("Taxi-v4", (500,)), ("FrozenLake-v1", (16,)),
                                               ("CliffWalking-v1", (48,)), ("Blackjack-v1", (45,))])
def test_discrete_and_tuple_observations_are_flattened(env_id: str, shape: tuple[int, ...]) -> None:
    spec = inspect_env(EnvConfig(id=env_id), "mlp")
    assert spec.obs_shape == shape


def test_frozen_lake_is_solved(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("train", "env=gym", "env.id=FrozenLake-v1", "env.kwargs.is_slippery=false",
                     "train.total_env_steps=6000", "exploration.linear_steps=3000", *SERIAL,
                     f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=480)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["best_eval_return"] == 1.0  # reaches the goal


def test_taxi_learns_to_stop_making_illegal_moves(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("train", "env=gym", "env.id=Taxi-v4", "train.total_env_steps=12000",
                     "exploration.linear_steps=6000", *SERIAL, f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=480)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_eval_return"] >= -200 > RANDOM_TAXI_RETURN  # no illegal move in any greedy episode
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    returns = [e.value for e in events.Scalars("train/episode_return")]
    assert statistics.fmean(returns[-10:]) > statistics.fmean(returns[:10]) + 200, returns


class _DictObservations(gym.Env):
    """Observations of every kind FlattenObservation takes, nested."""

    observation_space = gym.spaces.Dict({
        "where": gym.spaces.MultiDiscrete([3, 4]),
        "what": gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(-1, 1, (3,)))),
    })
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):  # type: ignore[no-untyped-def]
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):  # type: ignore[no-untyped-def]
        return self.observation_space.sample(), 0.0, True, False, {}


gym.register("asyncql-test/DictObservations-v0", entry_point=_DictObservations)


def test_dict_multidiscrete_and_tuple_observations_become_one_flat_vector() -> None:
    env = EnvConfig(id="asyncql-test/DictObservations-v0")
    spec = inspect_env(env, "mlp")
    assert spec.obs_shape == (3 + 4 + 2 + 3,)
    made = make_env(env)
    obs, _ = made.reset(seed=0)
    assert obs.shape == spec.obs_shape and obs.ndim == 1

"""`actor.max_update_debt`: actors wait while the learner owes more updates than the limit, except
an actor behind its equal share of the run's env steps, which steps on until the debt reaches
FAIR_SHARE_DEBT_FACTOR times the limit. Without that exception the actor that sees the counts
first takes every allowed step, and a remote Ray actor, which sees them a tick late, almost none
(benchmarks/RESULTS.md, "Fair shares")."""

from __future__ import annotations

import queue

import pytest

from asyncql_cli.algo.networks import build_network, num_parameters
from asyncql_cli.config.schema import ActorConfig, EnvConfig, ExplorationConfig, NetworkConfig
from asyncql_cli.envs.make import EnvSpec
from asyncql_cli.replay.transitions import ReplayStorage
from asyncql_cli.shm.counters import Counters
from asyncql_cli.shm.params import ParameterStore
from asyncql_cli.workers.actor import FAIR_SHARE_DEBT_FACTOR, Actor, ActorSettings

DEBT = 100


def two_actors() -> tuple[list[Actor], Counters]:
    network = NetworkConfig(name="mlp", hidden=[8], dueling=False)
    env = EnvSpec(env=EnvConfig(id="CartPole-v1", kwargs={}), obs_shape=(4,), obs_dtype="float32", num_actions=2)
    counters = Counters(2)
    storage = ReplayStorage(1024, 2, 16, (4,))
    params = ParameterStore(num_parameters(build_network(network, (4,), 2)))
    actors = []
    for actor_id in range(2):
        settings = ActorSettings(
            actor_id=actor_id, num_actors=2, envs_per_actor=2, env=env, network=network,
            exploration=ExplorationConfig(schedule="linear", apex_base=0.4, apex_alpha=7.0, linear_start=1.0,
                                          linear_end=0.01, linear_steps=1000),
            acting=ActorConfig(write_batch=16, weight_sync_steps=100, max_update_debt=DEBT),
            gamma=0.99, n_step=1, seed=actor_id, replay_ratio=1.0, learning_starts=0, max_update_debt=DEBT,
        )
        actors.append(Actor(settings, storage, params, counters, queue.SimpleQueue()))
    return actors, counters


@pytest.mark.parametrize(("updates", "ahead_waits", "behind_waits"), [
    (300, False, False),  # owed 50: within the limit, both step
    (200, True, False),  # owed 150: over the limit; only the actor behind its share steps
    (350 - FAIR_SHARE_DEBT_FACTOR * DEBT - 1, True, True),  # past the hard cap: both wait
])
def test_past_the_debt_only_the_actor_behind_its_share_steps(updates: int, ahead_waits: bool,
                                                             behind_waits: bool) -> None:
    actors, counters = two_actors()
    counters.set_env_steps(0, 300)
    counters.set_env_steps(1, 50)  # 50 x 2 actors < 350 steps in all: behind its share
    counters.set_learner_updates(0, updates)
    ahead, behind = actors
    assert ahead.must_wait() is ahead_waits
    assert behind.must_wait() is behind_waits


def test_shares_count_this_run_only_not_the_resumed_runs_steps() -> None:
    actors, counters = two_actors()
    counters.set_env_steps_offset(10_000)  # a resumed run's earlier steps belong to no actor of this one
    counters.set_env_steps(0, 200)
    counters.set_env_steps(1, 200)
    counters.set_learner_updates(0, 10_000 + 400 - DEBT - 1)  # owed DEBT + 1
    assert all(actor.must_wait() for actor in actors)  # equal shares: nobody is behind

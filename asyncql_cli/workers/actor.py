"""Actors: step a vector env epsilon-greedily, build n-step transitions, write them to replay.

One actor per process. It owns its vector env, its local copy of the Q-network (CPU) and its
segment of the replay (for Atari, one frame stream per env); it reads weights from the parameter
store every `weight_sync_steps` env steps, writes its env-step count and the update count of its
weights to its counter slots, and reports each finished episode on the stats queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from asyncql_cli.algo.exploration import apex_epsilons, draw_final_epsilon, effective_schedule, linear_epsilon
from asyncql_cli.algo.networks import build_network
from asyncql_cli.algo.nstep import NStepAccumulator, rows_from
from asyncql_cli.config.schema import ActorConfig, ExplorationConfig, NetworkConfig
from asyncql_cli.envs.make import EnvSpec, make_vector_env
from asyncql_cli.replay.frames import FrameRows, FrameStorage
from asyncql_cli.shm.counters import Counters
from asyncql_cli.shm.params import ParameterStore

# how long an actor that may not step (the learner owes updates, the budget is spent) waits
# before looking again: short against an env step, long enough to leave the core to the learner
WAIT_SECONDS = 0.001
# past actor.max_update_debt only actors behind their equal share of the steps go on, and only
# until the debt reaches this multiple of it (which bounds what a late or new actor may add)
FAIR_SHARE_DEBT_FACTOR = 2


@dataclass(frozen=True)
class ActorSettings:
    actor_id: int
    num_actors: int
    envs_per_actor: int
    env: EnvSpec
    network: NetworkConfig
    exploration: ExplorationConfig
    acting: ActorConfig  # write_batch, weight_sync_steps
    gamma: float
    n_step: int
    seed: int
    replay_ratio: float
    learning_starts: int
    # actors pause when the learner is this many updates behind replay_ratio; None = never
    max_update_debt: Optional[int] = None
    compute_priorities: bool = False  # Ape-X initial priorities (prioritized replay)
    one_network: bool = True  # False with independent learners: each network must keep up
    learner_ready_rows: int = 0  # rows the learner needs before its first update
    # once all actors together reach it, an actor stops stepping (a run ends within one vector
    # step per actor of train.total_env_steps); None = no budget (benchmarks)
    env_step_budget: Optional[int] = None
    generation: int = 0  # of a resumed run: frame replay episode ids stay unique


class Actor:
    IDLE_SECONDS = WAIT_SECONDS

    def __init__(self, settings: ActorSettings, storage: Any, params: Optional[ParameterStore],
                 counters: Counters, stats_queue: Any, q_net: Optional[torch.nn.Module] = None,
                 start_steps: int = 0):
        """`storage=None` keeps transitions for the caller (`take_transitions`, actor-learner
        mode). With `params=None` the actor acts with `q_net`, a network someone else keeps
        current (the shared Hogwild network), instead of syncing a private copy. A restarted
        actor continues from `start_steps`."""
        self.settings, self.storage, self.params = settings, storage, params
        self.counters, self.stats = counters, stats_queue
        self.envs = make_vector_env(settings.env.env, settings.envs_per_actor, training=True)
        if q_net is None:
            self.q_net = build_network(settings.network, settings.env.obs_shape, settings.env.num_actions)
            self.q_net.requires_grad_(False)
        else:
            self.q_net = q_net
        self.rng = np.random.default_rng(settings.seed)
        self.accumulator = NStepAccumulator(settings.envs_per_actor, settings.n_step, settings.gamma)
        self.game_stats = settings.env.env.atari is not None  # Atari: a learning episode is a life; report games
        # frame-deduplicated replay: each env is one stream of frame rows in its own segment
        first_stream = settings.actor_id * settings.envs_per_actor
        self.frame_rows = (FrameRows(settings.envs_per_actor, first_stream, settings.generation, start_steps)
                           if isinstance(storage, FrameStorage) else None)
        self.fixed_eps, self.final_eps = self._exploration()
        self.obs, _ = self.envs.reset(seed=settings.seed)
        self.episode_return = np.zeros(settings.envs_per_actor)
        self.episode_length = np.zeros(settings.envs_per_actor, dtype=np.int64)
        self.outbox: list[tuple] = []
        self.steps = start_steps
        self.steps_since_sync = 0
        # learner updates of the weights acted with; None: nothing published yet (act uniformly)
        self.weights_updates: Optional[int] = None if q_net is None else 0
        self.learner_ready = storage is None
        self.reported_eps: Optional[np.ndarray] = None  # the slot epsilons last sent on the stats queue
        self.eps_reported_at = 0  # this actor's env steps when they were sent
        self.updates_at_start = counters.updates()  # a resumed run's learner starts from its count

    def _exploration(self) -> tuple[Optional[np.ndarray], float]:
        """(fixed epsilons of this actor's envs, or None for an annealed one; its final epsilon)."""
        settings, exploration = self.settings, self.settings.exploration
        per_actor = settings.envs_per_actor
        schedule = effective_schedule(exploration.schedule, settings.num_actors * per_actor)
        if schedule == "apex":
            every = apex_epsilons(settings.num_actors * per_actor, exploration.apex_base, exploration.apex_alpha)
            return every[settings.actor_id * per_actor:][:per_actor], float(every.min())
        if schedule == "mnih2016":  # each actor anneals to its own final epsilon, drawn once
            return None, draw_final_epsilon(self.rng, exploration.mnih_finals, exploration.mnih_probs)
        return None, exploration.linear_end

    def epsilons(self) -> np.ndarray:
        if self.fixed_eps is not None:
            return self.fixed_eps
        e = self.settings.exploration
        eps = linear_epsilon(self.counters.total_env_steps(), e.linear_start, self.final_eps, e.linear_steps)
        return np.full(self.settings.envs_per_actor, eps)

    def sync_weights(self) -> None:
        updates = self.params.read_into(self.q_net)
        if updates is not None:
            self.weights_updates = updates
            self.counters.set_actor_updates(self.settings.actor_id, updates)
        self.steps_since_sync = 0

    def select_actions(self, eps: np.ndarray) -> np.ndarray:
        explore = self.rng.random(len(eps)) < eps
        random_actions = self.rng.integers(self.settings.env.num_actions, size=len(eps))
        if self.weights_updates is None:  # nothing published yet: act uniformly
            return random_actions
        with torch.no_grad():
            greedy = self.q_net(torch.as_tensor(self.obs)).argmax(1).numpy()  # the net casts (and scales uint8)
        return np.where(explore, random_actions, greedy)

    def must_wait(self) -> bool:
        """The budget is spent or the learner owes updates: the loop waits instead of stepping
        (one read of the global step count for both, as this runs before every vector step)."""
        steps = self.counters.total_env_steps()
        return self.budget_spent(steps) or self.learner_owes_updates(steps)

    def learner_owes_updates(self, total_env_steps: int) -> bool:
        """True when the learner is more than `max_update_debt` updates behind the target replay
        ratio; the actor then waits instead of filling the buffer with stale data."""
        if self.settings.max_update_debt is None:
            return False
        if not self.learner_ready:  # until the learner can start, waiting for it would deadlock
            # (an actor on another node than the learner writes an outbox: it sees the learner update)
            self.learner_ready = (self.counters.updates() > self.updates_at_start
                                  or self.storage.size() >= self.settings.learner_ready_rows)
            if not self.learner_ready:
                return False
        learnable = total_env_steps - self.settings.learning_starts
        done = self.counters.updates() if self.settings.one_network else self.counters.slowest_learner_updates()
        owed = self.settings.replay_ratio * learnable - done
        if owed <= self.settings.max_update_debt:
            return False
        return owed > FAIR_SHARE_DEBT_FACTOR * self.settings.max_update_debt or not self.behind_its_share()

    def behind_its_share(self) -> bool:
        """Fewer env steps than an equal share of this run's: an actor that sees the counts late (on
        another node than the learner) would otherwise lose every race for the allowed steps."""
        own = self.counters.env_steps_of(self.settings.actor_id)
        return own * self.settings.num_actors < self.counters.env_steps_of_all()

    def budget_spent(self, total_env_steps: Optional[int] = None) -> bool:
        budget = self.settings.env_step_budget
        if budget is None:
            return False
        return (self.counters.total_env_steps() if total_env_steps is None else total_env_steps) >= budget

    def step(self) -> None:
        """One vector-env step of all envs of this actor."""
        if self.params is not None and (
            self.steps_since_sync >= self.settings.acting.weight_sync_steps or self.weights_updates is None
        ):
            self.sync_weights()
        eps = self.epsilons()
        self.report_epsilons(eps)
        actions = self.select_actions(eps)
        next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
        done = terminated | truncated
        true_next = next_obs
        if done.any():
            true_next = next_obs.copy()
            for e in np.flatnonzero(done):
                true_next[e] = info["final_obs"][e]
        if self.frame_rows is None:
            self.outbox += self.accumulator.push(self.obs, actions, rewards, true_next, terminated, truncated)
        else:
            rows = self.frame_rows
            transitions = self.accumulator.push(rows.records(self.obs), actions, rewards,
                                                rows.records(true_next, 1), terminated, truncated)
            rows.add(transitions, done, true_next)
        self.report_episodes(rewards, done, info, eps)
        self.obs = next_obs
        n = self.settings.envs_per_actor
        self.steps += n
        self.steps_since_sync += n
        if self.storage is not None and self.flush_due():
            self.flush()
        self.counters.set_env_steps(self.settings.actor_id, self.steps)

    def first_slot(self) -> int:
        return self.settings.actor_id * self.settings.envs_per_actor

    def report_epsilons(self, eps: np.ndarray) -> None:
        """("epsilon", actor, first slot, the slots' epsilons): at the first step, then when they have
        changed, at most once per weight_sync_steps env steps (annealed epsilons change every step)."""
        if self.reported_eps is not None and (
            self.steps - self.eps_reported_at < self.settings.acting.weight_sync_steps
            or np.array_equal(eps, self.reported_eps)
        ):
            return
        self.stats.put(("epsilon", self.settings.actor_id, self.first_slot(), [float(x) for x in eps]))
        self.reported_eps, self.eps_reported_at = eps.copy(), self.steps

    def report_episodes(self, rewards: np.ndarray, done: np.ndarray, info: dict[str, Any],
                        eps: np.ndarray) -> None:
        """One stats message per finished episode: (actor, return, length, epsilon, env slot).
        Envs that report whole games (Atari, where with episodic life a lost life ends a learning
        episode) are reported per game, with the game's raw return and length."""
        self.episode_return += rewards
        self.episode_length += 1
        if not done.any():
            return
        games = info.get("final_info", {})
        for e in np.flatnonzero(done):
            slot = self.first_slot() + int(e)
            if not self.game_stats:
                self.stats.put(("episode", self.settings.actor_id, float(self.episode_return[e]),
                                int(self.episode_length[e]), float(eps[e]), slot))
            elif games.get("_game_return", np.zeros(len(done), dtype=bool))[e]:
                self.stats.put(("episode", self.settings.actor_id, float(games["game_return"][e]),
                                int(games["game_length"][e]), float(eps[e]), slot))
            self.episode_return[e] = 0.0
            self.episode_length[e] = 0

    def flush_due(self) -> bool:
        if self.frame_rows is not None:
            return self.frame_rows.ready(self.settings.acting.write_batch)
        return len(self.outbox) >= self.settings.acting.write_batch

    def take_transitions(self) -> list[tuple]:
        """Actor-learner mode: hand over the n-step transitions made since the last call."""
        taken, self.outbox = self.outbox, []
        return taken

    def flush(self) -> None:
        if self.frame_rows is not None:
            priority = self.initial_priority if self.settings.compute_priorities else None
            for segment, rows in self.frame_rows.take(priority):
                self.storage.write(segment, rows)
        elif self.outbox and self.storage is not None:
            rows = rows_from(self.outbox)
            if self.settings.compute_priorities:
                rows["priority"] = self.initial_priority(rows)
            self.storage.write(self.settings.actor_id, rows)
            self.outbox = []

    def initial_priority(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """Ape-X: the actor's own |R + gamma^(n) max_a Q(s', a) - Q(s, a)| for new rows."""
        with torch.no_grad():
            q = self.q_net(rows["obs"]).gather(1, rows["action"].unsqueeze(1)).squeeze(1)
            bootstrap = self.q_net(rows["next_obs"]).max(1).values
            return (rows["reward"] + rows["discount"] * bootstrap - q).abs()

    # -- the process loop (workers.child) ---------------------------------------------------
    def work(self) -> bool:
        if self.must_wait():
            self.flush()  # everything finished is in the replay while we wait
            return False
        self.step()
        return True

    def save(self) -> None:
        """Actors keep no checkpoint: their state is the replay and the counters."""

    def finish(self, main_alive: bool) -> None:
        self.flush()
        self.envs.close()

    def close(self) -> None:
        self.envs.close()

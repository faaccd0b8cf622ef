"""Actors: step a vector env epsilon-greedily, build n-step transitions, write them to replay.

One actor per process. It owns its vector env, its local copy of the Q-network (CPU) and
its segment of the replay; it reads weights from the parameter store every
`weight_sync_steps` env steps and reports each finished episode on the stats queue.

Exploration: Ape-X epsilons eps_j = base^(1 + alpha * j / (M - 1)) over all M env slots of
all actors (every env its own epsilon, as in Ape-X), or one linearly annealed epsilon
driven by the global env-step count.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from asyncql_cli.envs import make_vector_env
from asyncql_cli.frame_replay import FrameRows, FrameStorage
from asyncql_cli.networks import build_network
from asyncql_cli.params import ParameterStore
from asyncql_cli.process import Counters
from asyncql_cli.replay import ReplayStorage

# how long an actor that may not step (the learner owes updates, the budget is spent) waits
# before looking again: short against an env step, long enough to leave the core to the learner
WAIT_SECONDS = 0.001


@dataclass(frozen=True)
class ExplorationSettings:
    schedule: str
    apex_base: float
    apex_alpha: float
    linear_start: float
    linear_end: float
    linear_steps: int
    mnih_finals: tuple[float, ...] = (0.1, 0.01, 0.5)
    mnih_probs: tuple[float, ...] = (0.4, 0.3, 0.3)


@dataclass(frozen=True)
class ActorSettings:
    actor_id: int
    num_actors: int
    envs_per_actor: int
    env_id: str
    env_kwargs: dict[str, Any]
    max_episode_steps: Optional[int]
    obs_shape: tuple[int, ...]
    num_actions: int
    network: dict[str, Any]
    gamma: float
    n_step: int
    write_batch: int
    weight_sync_steps: int
    exploration: ExplorationSettings
    seed: int
    replay_ratio: float
    learning_starts: int
    max_update_debt: Optional[int]
    compute_priorities: bool = False
    one_network: bool = True  # False with independent learners: each network must keep up
    learner_ready_rows: int = 0  # rows the learner needs before its first update
    atari: Optional[dict[str, Any]] = None  # env.atari settings (Atari preprocessing); None = not Atari
    # train.total_env_steps: once all actors together reach it, an actor stops stepping (so a run
    # ends within one vector step per actor of its budget); None = no budget (benchmarks)
    env_step_budget: Optional[int] = None


def apex_epsilons(num_slots: int, base: float, alpha: float) -> np.ndarray:
    if num_slots == 1:
        return np.array([base])
    return base ** (1.0 + alpha * np.arange(num_slots) / (num_slots - 1))


def draw_final_epsilon(rng: np.random.Generator, finals: tuple[float, ...], probs: tuple[float, ...]) -> float:
    """Mnih et al. 2016: each actor-learner's final epsilon, drawn once with these probabilities."""
    return float(rng.choice(finals, p=np.asarray(probs) / sum(probs)))


def linear_epsilon(step: int, start: float, end: float, steps: int) -> float:
    return end + (start - end) * max(0.0, 1.0 - step / steps)


class NStepAccumulator:
    """Turns per-step (s, a, r, s', terminated, truncated) of E envs into n-step transitions.

    Emits (s_t, a_t, R_t^(n), s_{t+k}, gamma^k) with k = n, or fewer at an episode end; the
    discount is 0 when the episode terminated (no bootstrap) and gamma^k when it was
    truncated (bootstrap from the true last observation). Never crosses an episode end.
    """

    def __init__(self, num_envs: int, n_step: int, gamma: float):
        self.n_step = n_step
        self.gamma = gamma
        self.pending: list[deque] = [deque() for _ in range(num_envs)]

    def _emit(self, queue: deque, next_obs: np.ndarray, count: int, terminal: bool, out: list) -> None:
        for _ in range(count):
            ret, discount = 0.0, 1.0
            for _, _, reward in queue:
                ret += discount * reward
                discount *= self.gamma
            obs, action, _ = queue.popleft()
            out.append((obs, action, ret, next_obs, 0.0 if terminal else discount))

    def push(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> list[tuple]:
        out: list[tuple] = []
        for e, queue in enumerate(self.pending):
            queue.append((obs[e], int(actions[e]), float(rewards[e])))
            if terminated[e] or truncated[e]:
                self._emit(queue, next_obs[e], len(queue), bool(terminated[e]), out)
            elif len(queue) == self.n_step:
                self._emit(queue, next_obs[e], 1, False, out)
        return out


def rows_from(transitions: list[tuple]) -> dict[str, torch.Tensor]:
    obs, action, reward, next_obs, discount = zip(*transitions)
    return {
        "obs": torch.as_tensor(np.stack(obs), dtype=torch.float32),
        "action": torch.as_tensor(action, dtype=torch.int64),
        "reward": torch.as_tensor(reward, dtype=torch.float32),
        "next_obs": torch.as_tensor(np.stack(next_obs), dtype=torch.float32),
        "discount": torch.as_tensor(discount, dtype=torch.float32),
    }


class Actor:
    def __init__(
        self,
        settings: ActorSettings,
        storage: Optional[ReplayStorage],
        params: Optional[ParameterStore],
        counters: Counters,
        stats_queue: Any,
        q_net: Optional[torch.nn.Module] = None,
    ):
        """`storage=None` keeps transitions for the caller (`take_transitions`, actor-learner
        mode). With `params=None` the actor acts with `q_net`, a network someone else keeps
        current (the shared Hogwild network), instead of syncing a private copy."""
        s = settings
        self.s, self.storage, self.params, self.counters, self.stats = (
            settings, storage, params, counters, stats_queue
        )
        self.envs = make_vector_env(s.env_id, s.envs_per_actor, s.env_kwargs, s.max_episode_steps,
                                    atari=s.atari, training=True)
        if q_net is None:
            self.q_net = build_network(s.network, s.obs_shape, s.num_actions)
            self.q_net.requires_grad_(False)
        else:
            self.q_net = q_net
        self.rng = np.random.default_rng(s.seed)
        self.accumulator = NStepAccumulator(s.envs_per_actor, s.n_step, s.gamma)
        # frame-deduplicated replay: each env is one stream of frame rows in its own segment
        self.game_stats = s.atari is not None  # Atari: a learning episode is a life; report games
        self.frame_rows = (FrameRows(s.envs_per_actor, s.actor_id * s.envs_per_actor)
                           if isinstance(storage, FrameStorage) else None)
        slots = s.num_actors * s.envs_per_actor
        if s.exploration.schedule == "apex":
            e = s.exploration
            all_eps = apex_epsilons(slots, e.apex_base, e.apex_alpha)
            self.fixed_eps: Optional[np.ndarray] = all_eps[s.actor_id * s.envs_per_actor:][: s.envs_per_actor]
        elif s.exploration.schedule == "mnih2016":
            # Mnih et al. 2016: each actor-learner anneals to its own final epsilon, drawn once
            self.final_eps = draw_final_epsilon(self.rng, s.exploration.mnih_finals, s.exploration.mnih_probs)
            self.fixed_eps = None
        else:
            self.fixed_eps = None
        self.obs, _ = self.envs.reset(seed=s.seed)
        self.episode_return = np.zeros(s.envs_per_actor)
        self.episode_length = np.zeros(s.envs_per_actor, dtype=np.int64)
        self.outbox: list[tuple] = []
        self.steps = 0
        self.steps_since_sync = 0
        # learner updates behind the weights acted with; None: nothing published yet (act randomly)
        self.weights_updates: Optional[int] = None if q_net is None else 0
        self.learner_ready = storage is None

    def epsilons(self) -> np.ndarray:
        if self.fixed_eps is not None:
            return self.fixed_eps
        e = self.s.exploration
        end = self.final_eps if e.schedule == "mnih2016" else e.linear_end
        eps = linear_epsilon(self.counters.total_env_steps(), e.linear_start, end, e.linear_steps)
        return np.full(self.s.envs_per_actor, eps)

    def sync_weights(self) -> None:
        updates = self.params.read_into(self.q_net)
        if updates is not None:
            self.weights_updates = updates
            self.counters.arrays.actor_updates[self.s.actor_id] = updates
        self.steps_since_sync = 0

    def select_actions(self, eps: np.ndarray) -> np.ndarray:
        explore = self.rng.random(len(eps)) < eps
        random_actions = self.rng.integers(self.s.num_actions, size=len(eps))
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
        """True when the learner is more than `max_update_debt` updates behind the target
        replay ratio; the actor then waits instead of filling the buffer with stale data."""
        s = self.s
        if s.max_update_debt is None:
            return False
        if not self.learner_ready:  # until the learner can start, waiting for it would deadlock
            self.learner_ready = self.storage.size() >= s.learner_ready_rows
            if not self.learner_ready:
                return False
        learnable = total_env_steps - s.learning_starts
        done = self.counters.updates() if s.one_network else self.counters.slowest_learner_updates()
        return s.replay_ratio * learnable - done > s.max_update_debt

    def budget_spent(self, total_env_steps: Optional[int] = None) -> bool:
        """The run's env steps are all taken: stepping on would only overshoot the budget while
        the supervisor (which polls) gets round to stopping us."""
        budget = self.s.env_step_budget
        if budget is None:
            return False
        return (self.counters.total_env_steps() if total_env_steps is None else total_env_steps) >= budget

    def step(self) -> None:
        """One vector-env step of all envs of this actor."""
        if self.params is not None and (
            self.steps_since_sync >= self.s.weight_sync_steps or self.weights_updates is None
        ):
            self.sync_weights()
        eps = self.epsilons()
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
        n = self.s.envs_per_actor
        self.steps += n
        self.steps_since_sync += n
        if self.storage is not None and self.flush_due():
            self.flush()
        self.counters.arrays.env_steps[self.s.actor_id] = self.steps

    def report_episodes(self, rewards: np.ndarray, done: np.ndarray, info: dict[str, Any],
                        eps: np.ndarray) -> None:
        """One stats message per finished episode. Envs that report whole games (Atari,
        where with episodic life a lost life ends a learning episode) are reported per game,
        with the game's raw return and length."""
        self.episode_return += rewards
        self.episode_length += 1
        if not done.any():
            return
        games = info.get("final_info", {})
        for e in np.flatnonzero(done):
            if not self.game_stats:
                self.stats.put(("episode", self.s.actor_id, float(self.episode_return[e]),
                                int(self.episode_length[e]), float(eps[e])))
            elif games.get("_game_return", np.zeros(len(done), dtype=bool))[e]:
                self.stats.put(("episode", self.s.actor_id, float(games["game_return"][e]),
                                int(games["game_length"][e]), float(eps[e])))
            self.episode_return[e] = 0.0
            self.episode_length[e] = 0

    def flush_due(self) -> bool:
        if self.frame_rows is not None:
            return self.frame_rows.ready(self.s.write_batch)
        return len(self.outbox) >= self.s.write_batch

    def take_transitions(self) -> list[tuple]:
        """Actor-learner mode: hand over the n-step transitions made since the last call."""
        taken, self.outbox = self.outbox, []
        return taken

    def flush(self) -> None:
        if self.frame_rows is not None:
            priority = self.initial_priority if self.s.compute_priorities else None
            for segment, rows in self.frame_rows.take(priority):
                self.storage.write(segment, rows)
        elif self.outbox and self.storage is not None:
            rows = rows_from(self.outbox)
            if self.s.compute_priorities:
                rows["priority"] = self.initial_priority(rows)
            self.storage.write(self.s.actor_id, rows)
            self.outbox = []

    def initial_priority(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """Ape-X: the actor's own |R + gamma^(n) max_a Q(s', a) - Q(s, a)| for new rows."""
        with torch.no_grad():
            q = self.q_net(rows["obs"]).gather(1, rows["action"].unsqueeze(1)).squeeze(1)
            bootstrap = self.q_net(rows["next_obs"]).max(1).values
            return (rows["reward"] + rows["discount"] * bootstrap - q).abs()

    def close(self) -> None:
        self.envs.close()


def actor_main(settings: ActorSettings, storage: ReplayStorage, params: ParameterStore,
               counters: Counters, stats_queue: Any, stop_event: Any, parent_pid: int,
               torch_threads: int, start_steps: int = 0) -> None:
    """Process entry point: loop until the supervisor sets `stop_event` or the parent dies."""
    import traceback

    from asyncql_cli.process import init_child, parent_alive

    role = f"actor-{settings.actor_id}"
    init_child(role, parent_pid, torch_threads)
    try:
        actor = Actor(settings, storage, params, counters, stats_queue)
        actor.steps = start_steps
        slot = settings.actor_id
        while not stop_event.is_set() and parent_alive(parent_pid):
            counters.beat(slot)
            if actor.must_wait():
                actor.flush()  # everything finished is in the replay while we wait
                time.sleep(WAIT_SECONDS)
                continue
            actor.step()
        actor.flush()
        actor.close()
    except Exception as exc:
        stats_queue.put(("error", role, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        raise SystemExit(1) from None

"""The wiring: the only code that reads the config to make components (Acme's builder).

`Wiring` turns the typed `Config` into the plain settings each worker takes, and `allocate`
makes, in the main process, every piece of shared memory and every channel a run uses, and says
who writes what:
- replay storage: one ring segment per actor (per env stream for the frame replay), written only
  by that actor; learners and the main process read (no replay for actor-learners);
- parameter stores: one per learner network, written only by its learner (with Hogwild, by the
  primary); actors and the evaluator read;
- the Hogwild model (shared learners, actor-learners): network, target and Adam moments updated
  in place by every updating process; the primary alone writes the target;
- counters: one slot per process, written only by that process;
- the stats queue (children -> main), the stop event (main -> actors and learners), and the
  evaluator's own stop event and control events (main -> evaluator).
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from asyncql_cli import rundir
from asyncql_cli.algo.hogwild import SharedModel, make_shared_model
from asyncql_cli.algo.networks import build_network, num_parameters
from asyncql_cli.config.loading import as_dict
from asyncql_cli.config.schema import Config
from asyncql_cli.envs.make import EnvSpec
from asyncql_cli.errors import BadInput
from asyncql_cli.evaluation.selection import Best, SelectionSettings
from asyncql_cli.replay.frames import FrameStorage
from asyncql_cli.replay.transitions import ReplayStorage
from asyncql_cli.replay.uniform import sampler_seed
from asyncql_cli.runtime.forkserver import process_context
from asyncql_cli.shm.counters import Counters
from asyncql_cli.shm.params import ParameterStore
from asyncql_cli.workers.actor import Actor, ActorSettings
from asyncql_cli.workers.actor_learner import ActorLearner, ActorLearnerSettings
from asyncql_cli.workers.child import ChildContext
from asyncql_cli.workers.evaluator import Evaluator, EvaluatorControl, EvaluatorSettings, VideoSettings
from asyncql_cli.workers.learner import LearnerSettings, start_learner

MEMORY_HEADROOM = 1.2  # shared memory asked for must fit this many times in what is free
ENV_SEED_STRIDE = 10_000  # actor env seeds: seed * 10_000 + generation * 1_000 + env slot
GENERATION_SEED_STRIDE = 1_000


@dataclass
class Shared:
    """Everything shared between the processes of a run, allocated by `Wiring.allocate`."""

    storage: Optional[ReplayStorage | FrameStorage]
    stores: list[ParameterStore]
    counters: Counters
    model: Optional[SharedModel]  # Hogwild only
    stats: Any
    stop: Any
    evaluator_stop: Any
    evaluator_control: EvaluatorControl
    ctx: Any

    def store_for_actor(self, actor_id: int) -> ParameterStore:
        return self.stores[actor_id % len(self.stores)]

    def replay_size(self) -> int:
        return 0 if self.storage is None else self.storage.size()


@dataclass(frozen=True)
class ChildSpec:
    """A child process to start: its context, its worker factory and that factory's arguments."""

    context: ChildContext
    make_worker: Any
    args: tuple
    restartable: bool  # actors are restarted within the budget; a learner's crash ends the run


class Wiring:
    def __init__(self, config: Config, spec: EnvSpec, run_dir: Path, generation: int = 0):
        self.config, self.spec, self.run_dir, self.generation = config, spec, run_dir, generation
        p, a = config.parallelism, config.algo
        self.serial = p.name == "serial"
        self.uses_ray = p.name == "ray"
        self.actor_learner = a.mode == "actor_learner"
        self.hogwild = self.actor_learner or (p.num_learners > 1 and p.learner_sharing == "shared")
        self.frame_replay = config.env.atari is not None  # frame stacks: each frame stored once
        self.num_learners = 0 if self.actor_learner else p.num_learners
        self.num_updaters = p.num_actors if self.actor_learner else p.num_learners  # counter slots
        self.num_networks = 1 if self.hogwild else p.num_learners

    # -- memory ------------------------------------------------------------------------------
    def storage_bytes(self) -> int:
        if self.actor_learner:
            return 0
        capacity = self.config.buffer.capacity
        if self.frame_replay:
            return FrameStorage.bytes_needed(capacity, self.spec.obs_shape[1:])
        return ReplayStorage.bytes_needed(capacity, self.spec.obs_shape)

    def build_storage(self, outbox_rows: Optional[int] = None) -> Optional[ReplayStorage | FrameStorage]:
        """The replay, or with `outbox_rows` an outbox of its layout holding that many rows per
        segment (parallelism=ray: what actors on another node than the learner write)."""
        c, p = self.config, self.config.parallelism
        if self.actor_learner:
            return None
        segments = p.num_actors * p.envs_per_actor if self.frame_replay else p.num_actors
        capacity = c.buffer.capacity if outbox_rows is None else outbox_rows * segments
        if self.frame_replay:
            return FrameStorage(capacity, segments, c.actor.write_batch, self.spec.obs_shape, c.algo.n_step)
        return ReplayStorage(capacity, segments, c.actor.write_batch, self.spec.obs_shape)

    def segments_of_actor(self, actor_id: int) -> list[int]:
        """The replay segments actor `actor_id` writes (one per env stream for the frame replay)."""
        if self.frame_replay:
            per = self.config.parallelism.envs_per_actor
            return list(range(actor_id * per, (actor_id + 1) * per))
        return [actor_id]

    def allocate(self, with_storage: bool = True) -> Shared:
        """Everything shared; `with_storage=False` leaves the replay out (parallelism=ray's driver)."""
        c = self.config
        probe = build_network(c.network, self.spec.obs_shape, self.spec.num_actions)
        model = make_shared_model(c.network, self.spec.obs_shape, self.spec.num_actions, c.algo.lr,
                                  c.algo.adam_eps, c.seed) if self.hogwild else None
        if self.serial:  # one process: plain queue and events
            ctx, stats, event = None, queue.SimpleQueue(), threading.Event
        else:
            ctx = process_context()
            stats, event = ctx.Queue(), ctx.Event
        evaluator_stop = event()
        return Shared(
            storage=self.build_storage() if with_storage else None,
            stores=[ParameterStore(num_parameters(probe)) for _ in range(self.num_networks)],
            counters=Counters(c.parallelism.num_actors, self.num_updaters), model=model, stats=stats,
            stop=event(), evaluator_stop=evaluator_stop,
            evaluator_control=EvaluatorControl(stop=evaluator_stop, final_eval=event(), end_video=event(),
                                               abort=event()), ctx=ctx)

    # -- settings ----------------------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        return {"env_id": self.spec.env_id, "obs_shape": list(self.spec.obs_shape),
                "num_actions": self.spec.num_actions, "network": as_dict(self.config)["network"],
                "config": as_dict(self.config), "generation": self.generation}

    def checkpoint_dir(self) -> str:
        return str(self.run_dir / rundir.CHECKPOINTS)

    def actor_settings(self, actor_id: int) -> ActorSettings:
        c, p = self.config, self.config.parallelism
        return ActorSettings(
            actor_id=actor_id, num_actors=p.num_actors, envs_per_actor=p.envs_per_actor, env=self.spec,
            network=c.network, exploration=c.exploration, acting=c.actor, gamma=c.algo.gamma, n_step=c.algo.n_step,
            # a resumed run (generation g) must not replay the original episodes' seeds
            seed=c.seed * ENV_SEED_STRIDE + self.generation * GENERATION_SEED_STRIDE + actor_id * p.envs_per_actor,
            replay_ratio=c.algo.replay_ratio, learning_starts=c.train.learning_starts,
            max_update_debt=None if self.actor_learner else c.actor.max_update_debt,
            compute_priorities=c.buffer.name == "prioritized", one_network=self.hogwild or p.num_learners == 1,
            learner_ready_rows=max(c.train.learning_starts, c.algo.batch_size),
            env_step_budget=c.train.total_env_steps, generation=self.generation)

    def learner_settings(self, index: int) -> LearnerSettings:
        c = self.config
        return LearnerSettings(
            index=index, env=self.spec, network=c.network, algo=c.algo, buffer=c.buffer,
            device=c.parallelism.learner_device, seed=c.seed * ENV_SEED_STRIDE + index,
            sampler_seed=sampler_seed(c.seed, self.generation, index), learning_starts=c.train.learning_starts,
            total_env_steps=c.train.total_env_steps, stats_interval_seconds=c.train.log_interval_seconds,
            checkpoint_dir=self.checkpoint_dir(), checkpoint_meta=self.checkpoint_meta(),
            torch_threads=c.parallelism.torch_threads)

    def actor_learner_settings(self, index: int) -> ActorLearnerSettings:
        c = self.config
        return ActorLearnerSettings(actor=self.actor_settings(index), algo=c.algo,
                                    stats_interval_seconds=c.train.log_interval_seconds,
                                    checkpoint_dir=self.checkpoint_dir(), checkpoint_meta=self.checkpoint_meta())

    def evaluator_settings(self, heartbeat_slot: int) -> EvaluatorSettings:
        c, ev = self.config, self.config.eval
        video = VideoSettings(episodes=ev.video_episodes, seed=ev.seed, fps=ev.video_fps,
                              interval_seconds=ev.video_interval_seconds,
                              directory=str(self.run_dir / rundir.VIDEOS)) if ev.video else None
        selection = SelectionSettings(
            env=c.env, episodes=ev.episodes, confirm_episodes=ev.confirm_episodes, confirm_margin=ev.confirm_margin,
            seed=ev.seed, max_episode_steps=ev.max_episode_steps,
            best_file=str(self.run_dir / rundir.CHECKPOINTS / rundir.BEST), checkpoint_meta=self.checkpoint_meta())
        return EvaluatorSettings(selection=selection, env=self.spec, network=c.network,
                                 interval_seconds=ev.interval_seconds, video=video, heartbeat_slot=heartbeat_slot)

    # -- processes ---------------------------------------------------------------------------
    def _context(self, role: str, slot: int, shared: Shared, stop: Any, checkpoints: bool) -> ChildContext:
        interval = self.config.checkpoint.interval_seconds if checkpoints else None
        return ChildContext(role=role, counters=shared.counters, heartbeat_slot=slot, stats=shared.stats,
                            stop=stop, main_pid=os.getpid(), torch_threads=self.config.parallelism.torch_threads,
                            checkpoint_interval_seconds=interval)

    def actor_child(self, actor_id: int, shared: Shared) -> ChildSpec:
        """An actor (replay mode) or an actor-learner; a restart continues its counters."""
        steps = shared.counters.env_steps_of(actor_id)
        if self.actor_learner:
            updates = shared.counters.learner_updates_of(actor_id)
            return ChildSpec(self._context(f"actor-learner-{actor_id}", actor_id, shared, shared.stop, True),
                             ActorLearner, (self.actor_learner_settings(actor_id), shared.model,
                                            shared.stores[0], shared.counters, shared.stats, steps, updates), True)
        return ChildSpec(self._context(f"actor-{actor_id}", actor_id, shared, shared.stop, False), Actor,
                         (self.actor_settings(actor_id), shared.storage, shared.store_for_actor(actor_id),
                          shared.counters, shared.stats, None, steps), True)

    def learner_child(self, index: int, shared: Shared, resume_state: Optional[dict[str, Any]]) -> ChildSpec:
        store = shared.stores[0] if self.hogwild else shared.stores[index]
        context = self._context(f"learner-{index}", shared.counters.learner_slot(index), shared, shared.stop, True)
        return ChildSpec(context, start_learner, (self.learner_settings(index), shared.storage, store,
                                                  shared.counters, shared.stats, resume_state, shared.model), False)

    def evaluator_child(self, shared: Shared, best: Best) -> ChildSpec:
        slot = shared.counters.evaluator_slot()
        context = self._context("evaluator", slot, shared, shared.evaluator_stop, False)
        return ChildSpec(context, Evaluator, (self.evaluator_settings(slot), shared.stores, shared.counters,
                                              shared.stats, best, shared.evaluator_control), False)


def check_memory(needed: int, shm_dir: str = "/dev/shm") -> None:
    """Refuse a replay that cannot fit before anything is spawned (SIGBUS otherwise)."""
    if os.path.isdir(shm_dir):
        free = shutil.disk_usage(shm_dir).free
        if needed * MEMORY_HEADROOM > free:
            raise BadInput(
                f"buffer.capacity needs {needed / 2**20:,.0f} MiB of shared memory but {shm_dir} "
                f"has {free / 2**20:,.0f} MiB free; lower buffer.capacity or enlarge /dev/shm "
                "(docker run --shm-size=...)")
    available = _mem_available()
    if available is not None and needed * MEMORY_HEADROOM > available:
        raise BadInput(f"buffer.capacity needs {needed / 2**20:,.0f} MiB of memory but only "
                       f"{available / 2**20:,.0f} MiB is available; lower buffer.capacity")


def _mem_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None

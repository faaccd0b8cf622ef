"""Builders and wiring: the only code that reads the config to make components.

Components take plain typed settings (frozen dataclasses), never the config itself; this
module turns the resolved config into those settings and allocates, in the main process,
every piece of shared memory a run uses (`connect_components`).
"""

from __future__ import annotations

import os
import queue
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from asyncql_cli.actor import ActorSettings, ExplorationSettings
from asyncql_cli.actor_learner import ActorLearnerSettings
from asyncql_cli.config import BadInput
from asyncql_cli.envs import EnvSpec
from asyncql_cli.frame_replay import FrameStorage, frame_replay_bytes
from asyncql_cli.hogwild import SharedModel, make_shared_model
from asyncql_cli.learner import LearnerSettings
from asyncql_cli.networks import build_network, num_parameters
from asyncql_cli.params import ParameterStore
from asyncql_cli.process import Counters
from asyncql_cli.process_server import process_context
from asyncql_cli.replay import ReplayStorage, replay_bytes

MEMORY_HEADROOM = 1.2


def build_actor_settings(plain: dict[str, Any], spec: EnvSpec, actor_id: int,
                         generation: int = 0) -> ActorSettings:
    p, a, e = plain["parallelism"], plain["algo"], plain["exploration"]
    return ActorSettings(
        actor_id=actor_id, num_actors=p["num_actors"], envs_per_actor=p["envs_per_actor"],
        env_id=spec.env_id, env_kwargs=plain["env"]["kwargs"],
        max_episode_steps=plain["env"]["max_episode_steps"], obs_shape=spec.obs_shape,
        num_actions=spec.num_actions, network=plain["network"], gamma=a["gamma"],
        n_step=a["n_step"], write_batch=plain["actor"]["write_batch"],
        weight_sync_steps=plain["actor"]["weight_sync_steps"],
        exploration=ExplorationSettings(
            schedule=e["schedule"], apex_base=e["apex_base"], apex_alpha=e["apex_alpha"],
            linear_start=e["linear_start"], linear_end=e["linear_end"],
            linear_steps=e["linear_steps"], mnih_finals=tuple(e["mnih_finals"]),
            mnih_probs=tuple(e["mnih_probs"]),
        ),
        # a resumed run (generation g) must not replay the original episodes' seeds
        seed=plain["seed"] * 10_000 + generation * 1_000 + actor_id * p["envs_per_actor"],
        replay_ratio=a["replay_ratio"], learning_starts=plain["train"]["learning_starts"],
        max_update_debt=None if a["mode"] == "actor_learner" else plain["actor"]["max_update_debt"],
        compute_priorities=plain["buffer"]["name"] == "prioritized",
        one_network=hogwild(plain) or p["num_learners"] == 1,
        learner_ready_rows=max(plain["train"]["learning_starts"], a["batch_size"]),
        atari=plain["env"].get("atari"), env_step_budget=plain["train"]["total_env_steps"],
    )


def frame_replay(plain: dict[str, Any]) -> bool:
    """Atari observations are frame stacks: the replay stores each frame once."""
    return plain["env"].get("atari") is not None


def build_storage(plain: dict[str, Any], spec: EnvSpec) -> ReplayStorage | FrameStorage:
    """Frame rows, one stream per env (Atari), or n-step transitions, one segment per actor."""
    p, capacity, write_batch = plain["parallelism"], plain["buffer"]["capacity"], plain["actor"]["write_batch"]
    if frame_replay(plain):
        return FrameStorage(capacity, p["num_actors"] * p["envs_per_actor"], write_batch, spec.obs_shape,
                            plain["algo"]["n_step"])
    return ReplayStorage(capacity, p["num_actors"], write_batch, spec.obs_shape, "float32")


def storage_bytes(plain: dict[str, Any], spec: EnvSpec) -> int:
    """Shared memory `build_storage` will allocate."""
    if frame_replay(plain):
        return frame_replay_bytes(plain["buffer"]["capacity"], spec.obs_shape[1:])
    return replay_bytes(plain["buffer"]["capacity"], spec.obs_shape, "float32")


def checkpoint_meta(plain: dict[str, Any], spec: EnvSpec, generation: int = 0) -> dict[str, Any]:
    return {
        "env_id": spec.env_id, "obs_shape": list(spec.obs_shape), "num_actions": spec.num_actions,
        "network": plain["network"], "config": plain, "generation": generation,
    }


def build_learner_settings(plain: dict[str, Any], spec: EnvSpec, run_dir: Path,
                           generation: int = 0, index: int = 0) -> LearnerSettings:
    a = plain["algo"]
    return LearnerSettings(
        obs_shape=spec.obs_shape, num_actions=spec.num_actions, network=plain["network"],
        device=plain["parallelism"]["learner_device"], lr=a["lr"], adam_eps=a["adam_eps"],
        double=a["double"], loss=a["loss"], huber_delta=a["huber_delta"],
        batch_size=a["batch_size"], target_update=a["target_update"],
        target_tau=a["target_tau"], max_grad_norm=a["max_grad_norm"],
        replay_ratio=a["replay_ratio"], learning_starts=plain["train"]["learning_starts"],
        publish_interval=a["publish_interval"], nonfinite=a["nonfinite"], seed=plain["seed"] * 10_000 + index,
        stats_interval_seconds=plain["train"]["log_interval_seconds"],
        checkpoint_dir=str(run_dir / "checkpoints"),
        checkpoint_interval_seconds=plain["checkpoint"]["interval_seconds"],
        checkpoint_meta=checkpoint_meta(plain, spec, generation),
        prioritized=plain["buffer"]["name"] == "prioritized", alpha=plain["buffer"]["alpha"],
        beta=plain["buffer"]["beta"], beta_final=plain["buffer"]["beta_final"],
        priority_eps=plain["buffer"]["priority_eps"], total_env_steps=plain["train"]["total_env_steps"],
        lr_schedule=a["lr_schedule"], lr_final=a["lr_final"],
        index=index, sharing=plain["parallelism"]["learner_sharing"],
        prefetch=a["prefetch"], amp=a["amp"], compile=a["compile"],
    )


def build_actor_learner_settings(plain: dict[str, Any], spec: EnvSpec, run_dir: Path, index: int,
                                 generation: int = 0) -> ActorLearnerSettings:
    a = plain["algo"]
    return ActorLearnerSettings(
        actor=build_actor_settings(plain, spec, index, generation), t_max=a["t_max"], double=a["double"],
        loss=a["loss"], huber_delta=a["huber_delta"], max_grad_norm=a["max_grad_norm"],
        target_update=a["target_update"], target_tau=a["target_tau"],
        publish_interval=a["publish_interval"], nonfinite=a["nonfinite"],
        stats_interval_seconds=plain["train"]["log_interval_seconds"],
        checkpoint_dir=str(run_dir / "checkpoints"),
        checkpoint_interval_seconds=plain["checkpoint"]["interval_seconds"],
        checkpoint_meta=checkpoint_meta(plain, spec, generation),
    )


def hogwild(plain: dict[str, Any]) -> bool:
    """Whether one network is updated by several processes at once."""
    p = plain["parallelism"]
    return plain["algo"]["mode"] == "actor_learner" or (
        p["num_learners"] > 1 and p["learner_sharing"] == "shared")


def check_memory(needed: int, shm_dir: str = "/dev/shm") -> None:
    """Refuse a replay that cannot fit before anything is spawned (SIGBUS otherwise)."""
    if os.path.isdir(shm_dir):
        free = shutil.disk_usage(shm_dir).free
        if needed * MEMORY_HEADROOM > free:
            raise BadInput(
                f"buffer.capacity needs {needed / 2**20:,.0f} MiB of shared memory but {shm_dir} "
                f"has {free / 2**20:,.0f} MiB free; lower buffer.capacity or enlarge /dev/shm "
                "(docker run --shm-size=...)"
            )
    available = _mem_available()
    if available is not None and needed * MEMORY_HEADROOM > available:
        raise BadInput(
            f"buffer.capacity needs {needed / 2**20:,.0f} MiB of memory but only "
            f"{available / 2**20:,.0f} MiB is available; lower buffer.capacity"
        )


def _mem_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------ wiring
@dataclass
class Components:
    """Everything shared between processes, allocated here in the main process."""

    storage: Optional[ReplayStorage | FrameStorage]
    stores: list[ParameterStore]
    counters: Counters
    shared: Optional[SharedModel]
    stats: Any
    stop: Any
    ctx: Any
    processes: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0

    @property
    def params(self) -> ParameterStore:
        return self.stores[0]

    def store_for_actor(self, actor_id: int) -> ParameterStore:
        return self.stores[actor_id % len(self.stores)]

    def replay_size(self) -> int:
        return 0 if self.storage is None else self.storage.size()


def connect_components(plain: dict[str, Any], spec: EnvSpec, serial: bool) -> Components:
    """All shared state of a run, and who writes it:
    - replay storage: one ring segment per actor, written only by that actor (no replay
      in actor-learner mode);
    - parameter stores: one per learner network, written only by that learner (with
      Hogwild, one store written by the primary process); actors and the evaluator read;
    - shared model (Hogwild only): network, target and Adam moments updated in place;
    - counters: per-process slots, each written only by its process;
    - stats queue (children -> main) and stop event (main -> children)."""
    p, a = plain["parallelism"], plain["algo"]
    actor_learner = a["mode"] == "actor_learner"
    storage = None if actor_learner else build_storage(plain, spec)
    probe = build_network(plain["network"], spec.obs_shape, spec.num_actions)
    networks = 1 if hogwild(plain) else p["num_learners"]
    stores = [ParameterStore(num_parameters(probe)) for _ in range(networks)]
    updaters = p["num_actors"] if actor_learner else p["num_learners"]
    counters = Counters(p["num_actors"], updaters)
    shared = make_shared_model(plain["network"], spec.obs_shape, spec.num_actions, a["lr"], a["adam_eps"],
                               plain["seed"]) if hogwild(plain) else None
    ctx = process_context()
    stats = queue.SimpleQueue() if serial else ctx.Queue()
    stop = ctx.Event()
    return Components(storage, stores, counters, shared, stats, stop, ctx)

"""`resume=DIR`: read what a run left in its directory, and put it back before any child starts.

From last.pt (and last.learner<k>.pt for independent learners): the learner states, counters,
generation; from best.pt its score; from replay.pt (`checkpoint.save_replay`) the replay's rows
with their priorities; from summary.json the wall time of earlier generations. Every file is
checked against this run's env and network first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from asyncql_cli import rundir
from asyncql_cli.algo.hogwild import load_into_shared
from asyncql_cli.algo.networks import build_network
from asyncql_cli.checkpoint import check_compatible, load_checkpoint, load_replay_into, load_weights
from asyncql_cli.config.schema import NetworkConfig
from asyncql_cli.envs.make import EnvSpec
from asyncql_cli.errors import BadInput
from asyncql_cli.evaluation.selection import Best
from asyncql_cli.runtime.record import previous_wall_seconds
from asyncql_cli.runtime.wiring import Shared

log = logging.getLogger("asyncql")

@dataclass
class Resumed:
    generation: int  # of the run now starting
    primary: dict[str, Any]  # last.pt
    learner_states: list[Optional[dict[str, Any]]]  # one per learner process
    best: Best
    previous_wall: float


def _load_compatible(path: Path, spec: EnvSpec, network: NetworkConfig) -> dict[str, Any]:
    """A checkpoint of this env and network whose weights fit it (checked here, in the main
    process: a learner that found out would crash after the run had started)."""
    state = load_checkpoint(path)
    check_compatible(state, path, spec.env_id, spec.obs_shape, spec.num_actions, network)
    probe = build_network(network, spec.obs_shape, spec.num_actions)
    for weights in ("q_net", "target_net"):
        if weights in state:
            if not isinstance(state[weights], dict):
                raise BadInput(f"checkpoint {path} is damaged: its {weights!r} is not a dict of tensors")
            load_weights(probe, state[weights], path)
    return state


def read_resume(run_dir: Path, spec: EnvSpec, network: NetworkConfig, num_learners: int, hogwild: bool) -> Resumed:
    checkpoints = run_dir / rundir.CHECKPOINTS
    primary = _load_compatible(checkpoints / rundir.LAST, spec, network)
    states: list[Optional[dict[str, Any]]] = [primary]
    for index in range(1, num_learners):
        # Hogwild learners share one network: each restores only its counters from last.pt
        own = checkpoints / rundir.last_checkpoint_name(index)
        states.append(primary if hogwild else _load_compatible(own, spec, network))
    return Resumed(generation=int(primary.get("generation", 0)) + 1, primary=primary,
                   learner_states=states or [primary], best=Best.from_file(checkpoints / rundir.BEST),
                   previous_wall=previous_wall_seconds(run_dir))


def apply_resume(resumed: Resumed, shared: Shared, run_dir: Path) -> None:
    """Counters, the Hogwild model and the replay, in the main process before any child starts."""
    state, counters = resumed.primary, shared.counters
    counters.set_env_steps_offset(int(state["env_steps"]))
    saved = list(state.get("learner_updates", [state["updates"]]))
    if len(saved) == counters.num_updaters:
        for index, updates in enumerate(saved):
            counters.set_learner_updates(index, int(updates))
    else:  # the number of learners changed: the total goes to the primary
        counters.set_learner_updates(0, int(state["updates"]))
    if shared.model is not None:
        load_into_shared(shared.model, state)
    replay_file = run_dir / rundir.CHECKPOINTS / rundir.REPLAY
    restored = 0
    if shared.storage is not None and replay_file.is_file():
        restored = load_replay_into(shared.storage, replay_file)
    log.info("resuming at %d env steps, %d updates (generation %d), %d replay rows restored",
             state["env_steps"], state["updates"], resumed.generation, restored)

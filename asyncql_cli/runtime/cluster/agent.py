"""A node agent: the local machinery of one node, as a Ray actor pinned to it.

Memory of the node (allocated by the agent, shared with the processes it starts):
- counters with a slot per actor and learner of the whole run: this node's processes write their
  own slots; the agent writes every other slot from the driver's tick (so budgets, epsilon
  schedules and the update debt see the global counts);
- parameter stores: on the learner's node its learners publish into them; elsewhere the agent
  publishes the weights the driver broadcasts (it is their only writer there);
- the learner's node: the replay (its actors write their segments, the agent writes the segments
  of remote actors from shipments); another node: an outbox of the replay's layout that its
  actors write and its shipper thread reads.
The agent answers the driver's calls one at a time (Ray's default for an actor), so `ingest` is
the single writer of the remote segments. Children, log lines and checkpoint files reach the
driver through `tick`; nothing stays on the node after `close`.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from asyncql_cli import rundir
from asyncql_cli.algo.hogwild import load_into_shared
from asyncql_cli.checkpoint import load_checkpoint, load_replay_into, save_replay
from asyncql_cli.config.schema import Config
from asyncql_cli.envs.make import EnvSpec
from asyncql_cli.runtime.cluster.placement import AgentPlan
from asyncql_cli.runtime.cluster.shipping import OutboxReader, Shipper, ShippingStats
from asyncql_cli.runtime.forkserver import stop_process_server
from asyncql_cli.runtime.processes import ProcessGroup
from asyncql_cli.runtime.wiring import Wiring, check_memory

log = logging.getLogger("asyncql")


class _Records(logging.Handler):
    """The agent's log lines, kept for the driver's next tick."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))

    def take(self) -> list[tuple[int, str]]:
        lines, self.lines = self.lines, []
        return lines


class NodeAgent:
    def __init__(self, config: Config, spec: EnvSpec, generation: int, plan: AgentPlan,
                 counts: dict[str, Any], learner_agent: Any = None):
        self.plan = plan
        self.staging = Path(tempfile.mkdtemp(prefix="asyncql-agent-"))
        os.environ["TMPDIR"] = str(self.staging)  # multiprocessing's socket dirs: removed with it
        self.records = _Records()
        log.addHandler(self.records)
        log.setLevel(logging.INFO)
        self.wiring = Wiring(config, spec, self.staging, generation)
        if plan.hosts_learner:
            check_memory(self.wiring.storage_bytes())  # the replay lives here, not on the driver's machine
        self.shared = self.wiring.allocate()
        if not plan.hosts_learner:
            self.shared.storage = self.wiring.build_storage(outbox_rows=config.parallelism.outbox_rows)
        self.own_actors = set(plan.actor_ids)
        counters = self.shared.counters
        counters.set_env_steps_offset(int(counts["offset"]))
        for actor_id, steps in enumerate(counts["env_steps"]):
            counters.set_env_steps(actor_id, int(steps))
        for index, updates in enumerate(counts["learner_updates"]):
            counters.set_learner_updates(index, int(updates))
        p = config.parallelism
        self.group = ProcessGroup(counters, p.heartbeat_timeout_seconds, p.max_actor_restarts)
        self.stats = ShippingStats()
        self.shipper: Optional[Shipper] = None
        if not plan.hosts_learner and plan.actor_ids:
            segments = [s for a in plan.actor_ids for s in self.wiring.segments_of_actor(a)]
            reader = OutboxReader(self.shared.storage, segments, p.ship_batch_rows)
            self.shipper = Shipper(reader, learner_agent, p.ship_requests_in_flight, self.stats)
        self.sent_files: dict[str, int] = {}  # checkpoint file -> modification time already sent

    # -- starting ------------------------------------------------------------------------------
    def start(self, learner_states: Optional[list[Optional[dict[str, Any]]]] = None,
              replay: Optional[bytes] = None) -> str:
        ctx = self.shared.ctx
        if self.plan.hosts_learner:
            if replay is not None:
                path = self.staging / rundir.REPLAY
                path.write_bytes(replay)
                rows = load_replay_into(self.shared.storage, path)
                log.info("%d replay rows restored", rows)
            states = learner_states or [None] * self.wiring.num_learners
            if self.shared.model is not None and states[0] is not None:
                load_into_shared(self.shared.model, states[0])  # Hogwild learners share one network
            for index in range(self.wiring.num_learners):
                self.group.start(self.wiring.learner_child(index, self.shared, states[index]), ctx)
        for actor_id in self.plan.actor_ids:
            self.group.start(self.wiring.actor_child(actor_id, self.shared), ctx)
        if self.shipper is not None:
            self.shipper.start()
        return self.plan.name

    # -- each tick -----------------------------------------------------------------------------
    def _drain(self) -> list[tuple]:
        messages = []
        while True:
            try:
                message = self.shared.stats.get_nowait()
            except (queue.Empty, OSError, ValueError, EOFError):
                return messages
            if message[0] == "error":
                self.group.errors[message[1]] = message[2]
            messages.append(message)

    def tick(self, env_steps: list[int], learner_updates: list[int]) -> dict[str, Any]:
        """Take the global counts in; hand this node's counts, messages, log lines and files out."""
        counters = self.shared.counters
        for actor_id, steps in enumerate(env_steps):
            if actor_id not in self.own_actors:
                counters.set_env_steps(actor_id, steps)
        if not self.plan.hosts_learner:
            for index, updates in enumerate(learner_updates):
                counters.set_learner_updates(index, updates)
        messages: list[tuple] = []
        error = self.group.check(lambda: messages.extend(self._drain()), self._respawn, self.shared.ctx)
        messages.extend(self._drain())
        if self.shipper is not None and self.shipper.error is not None:
            error = f"{self.plan.name} cannot ship replay rows to the learner's node ({self.shipper.error})"
        shipped, lost = self.stats.take()
        return {"env_steps": {a: counters.env_steps_of(a) for a in self.plan.actor_ids},
                "actor_updates": {a: int(counters.actor_updates()[a]) for a in self.plan.actor_ids},
                "learner_updates": counters.learner_updates() if self.plan.hosts_learner else None,
                "replay_size": self.shared.replay_size() if self.plan.hosts_learner else 0,
                "messages": messages, "logs": self.records.take(), "files": self._new_files(),
                "shipped": shipped, "lost": lost, "error": error, "restarts": self.group.restarts}

    def _respawn(self, role: str) -> Any:
        return self.wiring.actor_child(int(role.rsplit("-", 1)[1]), self.shared)

    def _new_files(self) -> dict[str, bytes]:
        """Checkpoint files written since the last tick (the learner's node)."""
        out = {}
        folder = self.staging / rundir.CHECKPOINTS
        if folder.is_dir():
            for path in folder.glob("*.pt"):
                stamp = path.stat().st_mtime_ns
                if self.sent_files.get(path.name) != stamp:
                    out[path.name] = path.read_bytes()
                    self.sent_files[path.name] = stamp
        return out

    # -- weights and rows ------------------------------------------------------------------------
    def weights(self) -> list[Optional[tuple[np.ndarray, int]]]:
        """The learner's node: every published network as (flat weights, update count)."""
        out: list[Optional[tuple[np.ndarray, int]]] = []
        for store in self.shared.stores:
            copy = store.read_flat()
            out.append(None if copy is None else (copy[0].numpy(), copy[1]))
        return out

    def publish(self, refs: list[Any]) -> float:
        """Another node: publish broadcast weights into this node's stores; returns when done."""
        import ray

        for store, entry in zip(self.shared.stores, ray.get(refs[0])):
            if entry is not None:
                store.publish_tensors([torch.from_numpy(np.asarray(entry[0]))], int(entry[1]))
        return time.time()

    def ingest(self, segment: int, rows: dict[str, np.ndarray]) -> int:
        """The learner's node: rows a remote actor committed, into its segment of the replay."""
        self.shared.storage.write(segment, {name: torch.from_numpy(np.asarray(value)) for name, value in rows.items()})
        return len(rows["action"])

    # -- the end ---------------------------------------------------------------------------------
    def stop(self, forced: bool, keep_replay: bool) -> dict[str, Any]:
        """Actors (and learners) stop and write their last checkpoint; their files come back."""
        timeout = self.wiring.config.parallelism.join_timeout_seconds
        if self.shipper is not None:
            self.shared.stop.set()  # actors stop stepping; the rows they made still go out
        messages: list[tuple] = []
        self.group.stop(list(self.group.children), self.shared.stop, timeout,
                        lambda: messages.extend(self._drain()), lambda: forced)
        if self.shipper is not None:
            self.shipper.finish(timeout)
        messages.extend(self._drain())
        files = self._new_files()
        if keep_replay and self.plan.hosts_learner and not forced:
            last = self.staging / rundir.CHECKPOINTS / rundir.LAST
            learned = load_checkpoint(last).get("sampler") if last.is_file() else None
            path = self.staging / rundir.REPLAY
            rows = save_replay(self.shared.storage, path, learned)
            log.info("saved %d replay rows to %s/%s", rows, rundir.CHECKPOINTS, rundir.REPLAY)
            files[rundir.REPLAY] = path.read_bytes()
        return {"messages": messages, "logs": self.records.take(), "files": files,
                "env_steps": {a: self.shared.counters.env_steps_of(a) for a in self.plan.actor_ids},
                "learner_updates": self.shared.counters.learner_updates() if self.plan.hosts_learner else None}

    def close(self) -> bool:
        """Nothing of the run left on this node: children, forkserver, staging directory."""
        self.group.close()
        stop_process_server()
        self.shared.stats.close()
        self.shared.stats.join_thread()
        # The queue's and the events' named semaphores are unlinked when these objects go: done here,
        # since Ray ends this process (and the resource tracker, in its process group) with SIGKILL.
        self.shared = None  # type: ignore[assignment]
        self.group = None  # type: ignore[assignment]  # its children's arguments hold them too
        gc.collect()
        shutil.rmtree(self.staging, ignore_errors=True)
        return True

    def pids(self) -> dict[str, int]:
        return {**self.group.pids(), "agent": os.getpid()}

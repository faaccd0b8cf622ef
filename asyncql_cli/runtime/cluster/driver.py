"""The driver's side of `parallelism=ray`: node agents placed, ticked, fed weights, replaced, stopped.

Each tick of the run loop: every agent gets the global counts and hands back its node's counts,
its children's messages (routed as if they came from a local queue), its log lines and any new
checkpoint file (written into the run directory here). Every `weight_broadcast_seconds` the
learner's agent snapshots the published networks into one object; the driver hands that object to
every other agent with at most one publish in flight per node (newest wins) and publishes it into
its own stores, which the evaluator process reads. A worker node that stops answering (its agent
killed, the node removed) is replaced on an alive node within `max_node_restarts`; its actors go on
from their last counts, and rows it had not shipped are lost (the log says how many env steps). The
learner's node lost ends the run with exit 1.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from asyncql_cli import rundir
from asyncql_cli.checkpoint import write_bytes
from asyncql_cli.errors import BadInput
from asyncql_cli.runtime.cluster.agent import NodeAgent
from asyncql_cli.runtime.cluster.connect import Connection, alive_nodes, connect, pinned, this_node
from asyncql_cli.runtime.cluster.placement import AgentPlan, Node, place
from asyncql_cli.runtime.restore import Resumed
from asyncql_cli.runtime.stats import StatsRouter
from asyncql_cli.runtime.wiring import Shared, Wiring

log = logging.getLogger("asyncql")

START_SECONDS = 300.0  # an agent's start (its forkserver imports torch) may take this long on a busy node


@dataclass
class Agent:
    plan: AgentPlan
    handle: Any
    publishing: Optional[Any] = None  # the publish in flight, if any
    env_steps: dict[int, int] = field(default_factory=dict)


@dataclass
class ClusterStats:
    """What the run logs under ray/... each log interval."""

    rows_shipped: int = 0
    rows_lost: int = 0
    tick_ms: list[float] = field(default_factory=list)
    broadcast_ms: list[float] = field(default_factory=list)

    def take(self) -> tuple[int, int, float, float]:
        rows, lost = self.rows_shipped, self.rows_lost
        tick = float(np.mean(self.tick_ms)) if self.tick_ms else 0.0
        broadcast = float(np.mean(self.broadcast_ms)) if self.broadcast_ms else 0.0
        self.rows_shipped = self.rows_lost = 0
        self.tick_ms, self.broadcast_ms = [], []
        return rows, lost, tick, broadcast


def _ray_error_cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


class RayWorkers:
    def __init__(self, wiring: Wiring, shared: Shared, router: StatsRouter, run_dir: Path,
                 resumed: Optional[Resumed]):
        import ray

        self.ray = ray
        self.wiring, self.shared, self.router, self.run_dir, self.resumed = wiring, shared, router, run_dir, resumed
        p = wiring.config.parallelism
        self.connection: Connection = connect(p.address, p.object_store_mb)
        self.stats = ClusterStats()
        self.error: Optional[str] = None
        self.node_restarts = 0
        self.actor_restarts: dict[str, int] = {}
        self.agents: list[Agent] = []
        self.learner: Optional[Agent] = None
        self.last_broadcast = 0.0
        self.weights_ref: Optional[Any] = None
        self.weights_sent_at = 0.0
        self.replay_size = 0
        try:
            self.plans = place(alive_nodes(), p.num_actors, dict(p.learner_resources), p.actors_on_learner_node,
                               this_node())
        except BaseException:
            self.connection.close()
            raise
        self.remote_agent = ray.remote(NodeAgent)

    # -- starting --------------------------------------------------------------------------------
    def _counts(self) -> dict[str, Any]:
        counters = self.shared.counters
        steps = [counters.env_steps_of(a) for a in range(counters.num_actors)]
        return {"offset": counters.total_env_steps() - sum(steps), "env_steps": steps,
                "learner_updates": counters.learner_updates()}

    def _create(self, plan: AgentPlan) -> Agent:
        p = self.wiring.config.parallelism
        gpus = float(p.learner_resources.get("GPU", 0)) if plan.hosts_learner else 0.0
        custom = {k: v for k, v in p.learner_resources.items() if k not in ("GPU", "CPU")} if plan.hosts_learner else {}
        options = pinned(plan.node_id, gpus, custom)
        handle = self.remote_agent.options(**options).remote(
            self.wiring.config, self.wiring.spec, self.wiring.generation, plan, self._counts(),
            None if plan.hosts_learner else self.learner.handle)  # type: ignore[union-attr]
        return Agent(plan, handle)

    def start(self) -> None:
        """The learner's agent first (remote actors ship to it), then the others; each one's start
        waits for its children's forkserver to be ready."""
        learner_plan = next(plan for plan in self.plans if plan.hosts_learner)
        self.learner = self._create(learner_plan)
        self.agents = [self.learner, *[self._create(plan) for plan in self.plans if not plan.hosts_learner]]
        states = self.resumed.learner_states if self.resumed is not None else None
        replay_file = self.run_dir / rundir.CHECKPOINTS / rundir.REPLAY
        replay = replay_file.read_bytes() if self.resumed is not None and replay_file.is_file() else None
        starts = [agent.handle.start.remote(states, replay) if agent is self.learner else agent.handle.start.remote()
                  for agent in self.agents]
        try:
            names = self.ray.get(starts, timeout=START_SECONDS)
        except Exception as exc:
            cause = _ray_error_cause(exc)
            if isinstance(cause, BadInput):
                raise cause from None
            raise
        for agent, name in zip(self.agents, names):
            where = f"{len(agent.plan.actor_ids)} actor process(es)" + (", the learner and the replay"
                                                                         if agent.plan.hosts_learner else "")
            log.info("%s started on Ray node %s: %s", name, agent.plan.node_id[:12], where)

    # -- each tick -------------------------------------------------------------------------------
    def sync(self) -> None:
        counters = self.shared.counters
        env_steps = [counters.env_steps_of(a) for a in range(counters.num_actors)]
        learner_updates = counters.learner_updates()
        started = time.monotonic()
        refs = [agent.handle.tick.remote(env_steps, learner_updates) for agent in self.agents]
        timeout = self.wiring.config.parallelism.node_timeout_seconds
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        self.stats.tick_ms.append(1000 * (time.monotonic() - started))
        for agent, ref in list(zip(self.agents, refs)):
            if ref not in ready:
                self._lost(agent, f"no answer for {timeout:.0f} s")
                continue
            try:
                self._apply(agent, self.ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - the agent or its node is gone
                self._lost(agent, f"{type(_ray_error_cause(exc)).__name__}: {_ray_error_cause(exc)}")
        self._broadcast()

    def _apply(self, agent: Agent, report: dict[str, Any]) -> None:
        counters = self.shared.counters
        for actor_id, steps in report.get("env_steps", {}).items():
            counters.set_env_steps(actor_id, steps)
            agent.env_steps[actor_id] = steps
        for actor_id, updates in report.get("actor_updates", {}).items():
            counters.set_actor_updates(actor_id, updates)
        if report.get("learner_updates") is not None:
            for index, updates in enumerate(report["learner_updates"]):
                counters.set_learner_updates(index, updates)
            self.replay_size = report.get("replay_size", self.replay_size)
        for level, text in report.get("logs", []):
            log.log(level, "[%s] %s", agent.plan.name, text)
        for message in report.get("messages", []):
            self.router.handle(message)
        for name, data in report.get("files", {}).items():
            write_bytes(self.run_dir / rundir.CHECKPOINTS / name, data)
        self.stats.rows_shipped += report.get("shipped", 0)
        self.stats.rows_lost += report.get("lost", 0)
        self.actor_restarts[agent.plan.name] = report.get("restarts", 0)
        if report.get("error") and self.error is None:
            self.error = f"{agent.plan.name}: {report['error']}"

    def _broadcast(self) -> None:
        """Weights from the learner's node to the others and to the driver's stores."""
        now = time.monotonic()
        if self.weights_ref is not None:
            ready, _ = self.ray.wait([self.weights_ref], timeout=0)
            if ready:
                self._publish_here(self.ray.get(self.weights_ref))
                for agent in self.agents:
                    if agent is self.learner:
                        continue
                    if agent.publishing is not None:
                        done, _ = self.ray.wait([agent.publishing], timeout=0)
                        if not done:
                            continue  # the last publish to that node is still under way: newest wins
                        self.stats.broadcast_ms.append(1000 * (time.monotonic() - self.weights_sent_at))
                    agent.publishing = agent.handle.publish.remote([self.weights_ref])
                self.weights_ref = None
        interval = self.wiring.config.parallelism.weight_broadcast_seconds
        if self.weights_ref is None and self.learner is not None and now - self.last_broadcast >= interval:
            self.weights_ref = self.learner.handle.weights.remote()
            self.weights_sent_at = self.last_broadcast = now

    def _publish_here(self, networks: list[Optional[tuple[np.ndarray, int]]]) -> None:
        for store, entry in zip(self.shared.stores, networks):
            if entry is not None:
                store.publish_tensors([torch.from_numpy(np.array(entry[0]))], int(entry[1]))

    # -- losses ----------------------------------------------------------------------------------
    def _lost(self, agent: Agent, why: str) -> None:
        self.ray.kill(agent.handle, no_restart=True)
        if agent.plan.hosts_learner:
            self.error = self.error or f"the learner's node {agent.plan.node_id[:12]} was lost ({why})"
            return
        steps = {a: agent.env_steps.get(a, 0) for a in agent.plan.actor_ids}
        log.error("%s on Ray node %s lost (%s): actors %s stop at env steps %s; rows they had not shipped are "
                  "lost", agent.plan.name, agent.plan.node_id[:12], why, list(agent.plan.actor_ids), steps)
        self.agents.remove(agent)
        budget = self.wiring.config.parallelism.max_node_restarts
        if self.node_restarts >= budget:
            log.error("the node restart budget (%d) is spent: the run goes on without actors %s", budget,
                      list(agent.plan.actor_ids))
            return
        nodes = alive_nodes()
        node = self._replacement_node(agent.plan.node_id, nodes)
        if node is None:
            log.error("no alive node to restart %s on: the run goes on without it", agent.plan.name)
            return
        self.node_restarts += 1
        plan = AgentPlan(f"{agent.plan.name.split(' ')[0]}.{self.node_restarts}", node.node_id, False,
                         agent.plan.actor_ids)
        replacement = self._create(plan)
        try:
            self.ray.get(replacement.handle.start.remote(), timeout=START_SECONDS)
        except Exception as exc:  # noqa: BLE001 - that node failed too: the run goes on without it
            log.error("restarting %s failed (%s)", plan.name, _ray_error_cause(exc))
            self.ray.kill(replacement.handle, no_restart=True)
            return
        self.agents.append(replacement)
        log.warning("%s restarted on Ray node %s (%d/%d)", plan.name, node.node_id[:12], self.node_restarts,
                    budget)

    def _replacement_node(self, lost_node: str, nodes: list[Node]) -> Optional[Node]:
        by_id = {node.node_id: node for node in nodes}
        if lost_node in by_id:
            return by_id[lost_node]
        learner = self.learner.plan.node_id if self.learner else None
        others = [node for node in nodes if node.node_id != learner]
        return (others or nodes or [None])[0]

    # -- the end ---------------------------------------------------------------------------------
    def stop(self, forced: bool) -> None:
        """Actors and learners stop on every node; the last checkpoints (and the replay) come here."""
        save_replay = self.wiring.config.checkpoint.save_replay
        refs = [agent.handle.stop.remote(forced, save_replay) for agent in self.agents]
        p = self.wiring.config.parallelism
        timeout = p.join_timeout_seconds + p.node_timeout_seconds
        for agent, ref in zip(self.agents, refs):
            try:
                self._apply(agent, self.ray.get(ref, timeout=timeout))
            except Exception as exc:  # noqa: BLE001 - a node lost at the very end: its files are gone
                log.error("%s did not stop cleanly (%s)", agent.plan.name, _ray_error_cause(exc))
        if self.weights_ref is not None:  # the final weights, for the evaluator's final evaluation
            self.weights_ref = None
        if self.learner is not None and self.learner in self.agents:
            try:
                self._publish_here(self.ray.get(self.learner.handle.weights.remote(), timeout=timeout))
            except Exception as exc:  # noqa: BLE001
                log.error("the final weights could not be fetched (%s)", _ray_error_cause(exc))

    def close(self) -> None:
        """No process of the run left on any node; Ray stopped if this run started it."""
        closing = [agent.handle.close.remote() for agent in self.agents]
        if closing:
            timeout = self.wiring.config.parallelism.node_timeout_seconds
            self.ray.wait(closing, num_returns=len(closing), timeout=timeout)
        for agent in self.agents:
            self.ray.kill(agent.handle, no_restart=True)
        self.agents = []
        self.connection.close()

    def restarts(self) -> int:
        return sum(self.actor_restarts.values())

    def policy_lag_by_node(self) -> dict[str, float]:
        counters = self.shared.counters
        acted_with = counters.actor_updates()
        per_learner = np.asarray(counters.learner_updates())
        out = {}
        for agent in self.agents:
            ids = list(agent.plan.actor_ids)
            if ids:
                followed = per_learner[np.asarray(ids) % len(per_learner)]
                out[agent.plan.name.split(" ")[0]] = float((followed - acted_with[ids]).mean())
        return out

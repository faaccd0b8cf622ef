"""Which node runs the learner and which actor processes each node runs (no Ray here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from asyncql_cli.errors import BadInput


@dataclass(frozen=True)
class Node:
    node_id: str
    resources: dict[str, float]  # the node's total resources (CPU, GPU, memory, custom ones)


@dataclass(frozen=True)
class AgentPlan:
    """One node agent: its node, its actor processes, whether it hosts the learner and replay."""

    name: str
    node_id: str
    hosts_learner: bool
    actor_ids: tuple[int, ...]


def missing(node: Node, wanted: dict[str, float]) -> dict[str, float]:
    return {key: amount for key, amount in wanted.items() if node.resources.get(key, 0.0) < amount}


def place(nodes: list[Node], num_actors: int, learner_resources: dict[str, float],
          actors_on_learner_node: Optional[int], preferred: Optional[str] = None) -> list[AgentPlan]:
    """The learner on the first node that has `learner_resources` (the `preferred` one, the
    driver's, when it does), actors spread round-robin over every node, or `actors_on_learner_node`
    of them on the learner's node and the rest round-robin over the others."""
    able = [node for node in nodes if not missing(node, learner_resources)]
    if not able:
        have = "; ".join(f"{n.node_id[:8]}: " + ", ".join(f"{k}={v:g}" for k, v in sorted(n.resources.items())
                                                          if k in ("CPU", "GPU") or k in learner_resources)
                         for n in nodes)
        wanted = ", ".join(f"{k}={v:g}" for k, v in learner_resources.items())
        raise BadInput(f"parallelism.learner_resources: no node of the cluster has {wanted} ({have})")
    learner = next((n for n in able if n.node_id == preferred), able[0])
    others = [n for n in nodes if n.node_id != learner.node_id]
    counts = {node.node_id: 0 for node in [learner, *others]}
    if actors_on_learner_node is None or not others:
        order = [learner, *others]
        for actor_id in range(num_actors):
            counts[order[actor_id % len(order)].node_id] += 1
    else:
        counts[learner.node_id] = actors_on_learner_node
        for i in range(num_actors - actors_on_learner_node):
            counts[others[i % len(others)].node_id] += 1
    plans, next_id = [], 0
    for index, node in enumerate([learner, *others]):
        ids = tuple(range(next_id, next_id + counts[node.node_id]))
        next_id += len(ids)
        if ids or node is learner:
            name = f"node-{index}" + (" (learner)" if node is learner else "")
            plans.append(AgentPlan(name, node.node_id, node is learner, ids))
    return plans

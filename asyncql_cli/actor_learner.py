"""Asynchronous one-step and n-step Q-learning (Mnih et al. 2016): actor-learners, no replay.

Each of N processes acts in its own envs with the shared Q-network and, every `t_max`
vector steps, takes one gradient step on the n-step transitions it just produced:

    y     = R_t^(n) + gamma^(n) Q^-(s_{t+n}, argmax_a Q(s_{t+n}, a))   (or max_a Q^-, double=false)
    theta <- SharedAdam(theta, clip(grad sum_t Huber(y - Q(s_t, a_t))))    applied Hogwild
    every target_update global env steps: Q^- <- Q                         (process 0 only)

Memory: the network, target and Adam moments are shared (see hogwild.py); each process's
gradients are private. Process 0 (the primary) is the only writer of the target network,
of the parameter store the main process evaluates from, and of `last.pt`. Exploration: with
`exploration.schedule=mnih2016` each process draws its final epsilon from {0.1, 0.01, 0.5}
with probabilities {0.4, 0.3, 0.3} and anneals to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from asyncql_cli.actor import WAIT_SECONDS, Actor, ActorSettings, rows_from
from asyncql_cli.checkpoint import save_checkpoint
from asyncql_cli.hogwild import SharedModel
from asyncql_cli.learner import UpdateStats, apply_gradients, loss_is_finite
from asyncql_cli.losses import td_loss, update_target
from asyncql_cli.params import ParameterStore
from asyncql_cli.process import Counters


@dataclass(frozen=True)
class ActorLearnerSettings:
    actor: ActorSettings
    t_max: int
    double: bool
    loss: str
    huber_delta: float
    max_grad_norm: Optional[float]
    target_update: int  # in global env steps, as in the paper
    target_tau: float
    publish_interval: int
    nonfinite: str
    stats_interval_seconds: float
    checkpoint_dir: str
    checkpoint_interval_seconds: float
    checkpoint_meta: dict[str, Any]


class ActorLearner:
    def __init__(self, settings: ActorLearnerSettings, shared: SharedModel, params: ParameterStore,
                 counters: Counters, stats_queue: Any):
        self.s, self.shared, self.params, self.counters = settings, shared, params, counters
        self.index = settings.actor.actor_id
        self.primary = self.index == 0
        # act with the shared weights, as the paper's threads do
        self.actor = Actor(settings.actor, None, None, counters, stats_queue, q_net=shared.q_net)
        self.updates = 0
        self.skipped = 0
        self.target_copies = counters.total_env_steps() // settings.target_update
        self.stats_window = UpdateStats(self.index, settings.stats_interval_seconds, stats_queue)
        self.parameters = list(self.shared.q_net.parameters())

    def step(self) -> bool:
        """t_max vector steps of acting, then one Hogwild gradient step on what was seen."""
        for _ in range(self.s.t_max):
            if self.actor.budget_spent():
                break
            self.actor.step()
        transitions = self.actor.take_transitions()
        if not transitions:
            return False
        rows = rows_from(transitions)
        out = td_loss(self.shared.q_net, self.shared.target_net, rows["obs"], rows["action"],
                      rows["reward"], rows["next_obs"], rows["discount"], self.s.double, self.s.loss,
                      self.s.huber_delta)
        loss = out.loss.item()
        if not loss_is_finite(loss, self.counters.updates() + 1, self.s.nonfinite):
            self.skipped += 1
            return False
        grad_norm = apply_gradients(self.parameters, self.shared.optimizer, out.loss, self.s.max_grad_norm)
        self.updates += 1
        self.counters.arrays.learner_updates[self.index] = self.updates
        self.counters.arrays.actor_updates[self.index] = self.counters.updates()
        if self.primary:
            copies = self.counters.total_env_steps() // self.s.target_update
            if copies > self.target_copies:
                update_target(self.shared.q_net, self.shared.target_net, self.s.target_tau)
                self.target_copies = copies
            if self.updates % self.s.publish_interval == 0:
                self.publish()
        self.stats_window.add(loss, out.q_mean.item(), grad_norm, self.updates, self.skipped)
        return True

    def publish(self) -> None:
        self.params.publish(self.shared.q_net, self.counters.updates())

    def save_last(self) -> None:
        if not self.primary:
            return
        learner_updates = self.counters.learner_updates.tolist()  # one read: the others keep updating
        state = {
            **self.s.checkpoint_meta,
            "q_net": {k: v.detach().clone() for k, v in self.shared.q_net.state_dict().items()},
            "target_net": {k: v.detach().clone() for k, v in self.shared.target_net.state_dict().items()},
            "optimizer": self.shared.optimizer.state_dict(),
            "updates": sum(learner_updates),
            "learner_updates": learner_updates,
            "env_steps": self.counters.total_env_steps(),
        }
        save_checkpoint(Path(self.s.checkpoint_dir) / "last.pt", state)


def actor_learner_main(settings: ActorLearnerSettings, shared: SharedModel, params: ParameterStore,
                       counters: Counters, stats_queue: Any, stop_event: Any, parent_pid: int,
                       torch_threads: int, start_steps: int = 0, start_updates: int = 0) -> None:
    """Process entry point (also for a restart: it continues its step and update counts)."""
    import traceback

    from asyncql_cli.process import init_child, parent_alive

    role = f"actor-learner-{settings.actor.actor_id}"
    init_child(role, parent_pid, torch_threads)
    try:
        worker = ActorLearner(settings, shared, params, counters, stats_queue)
        worker.actor.steps, worker.updates = start_steps, start_updates
        if worker.primary:
            worker.publish()
        last_checkpoint = time.monotonic()
        while not stop_event.is_set() and parent_alive(parent_pid):
            counters.beat(worker.index)
            if worker.actor.budget_spent():
                time.sleep(WAIT_SECONDS)
                continue
            worker.step()  # stops acting at the budget too
            if time.monotonic() - last_checkpoint >= settings.checkpoint_interval_seconds:
                worker.save_last()
                last_checkpoint = time.monotonic()
        worker.stats_window.flush(worker.updates, worker.skipped)
        if parent_alive(parent_pid):
            worker.save_last()
        worker.actor.close()
    except Exception as exc:
        stats_queue.put(("error", role, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        raise SystemExit(1) from None

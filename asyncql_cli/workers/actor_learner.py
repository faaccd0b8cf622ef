"""Asynchronous n-step Q-learning (after Mnih et al. 2016): actor-learners, no replay.

Each of N processes acts in its own envs with the shared Q-network and, every `t_max` vector
steps, takes one gradient step on the n-step transitions it just produced:

    y     = R_t^(n) + gamma^(n) Q^-(s_{t+n}, argmax_a Q(s_{t+n}, a))   (or max_a Q^-, double=false)
    theta <- SharedAdam(theta, clip(grad mean_t Huber(y - Q(s_t, a_t))))   applied Hogwild
    every target_update global updates: Q^- <- Q                           (process 0 only)

Memory: the network, target and Adam moments are shared (algo/hogwild.py); each process's
gradients are private. Process 0 (the primary) is the only writer of the target network, of
the parameter store the evaluator reads, and of `last.pt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncql_cli import rundir
from asyncql_cli.algo.hogwild import SharedModel
from asyncql_cli.algo.losses import td_loss, update_target
from asyncql_cli.algo.nstep import rows_from
from asyncql_cli.algo.update import gradient_step, loss_is_finite
from asyncql_cli.checkpoint import save_checkpoint
from asyncql_cli.config.schema import AlgoConfig
from asyncql_cli.shm.counters import Counters
from asyncql_cli.shm.params import ParameterStore
from asyncql_cli.workers.actor import WAIT_SECONDS, Actor, ActorSettings
from asyncql_cli.workers.stats import UpdateStats


@dataclass(frozen=True)
class ActorLearnerSettings:
    actor: ActorSettings
    algo: AlgoConfig  # t_max, double, loss, huber_delta, max_grad_norm, target_update, ...
    stats_interval_seconds: float
    checkpoint_dir: str
    checkpoint_meta: dict[str, Any]


class ActorLearner:
    IDLE_SECONDS = WAIT_SECONDS

    def __init__(self, settings: ActorLearnerSettings, shared: SharedModel, params: ParameterStore,
                 counters: Counters, stats_queue: Any, start_steps: int = 0, start_updates: int = 0):
        """A restarted process continues its step and update counts."""
        self.settings, self.algo, self.shared = settings, settings.algo, shared
        self.params, self.counters = params, counters
        self.index = settings.actor.actor_id
        self.primary = self.index == 0
        # act with the shared weights, as the paper's threads do
        self.actor = Actor(settings.actor, None, None, counters, stats_queue, q_net=shared.q_net,
                           start_steps=start_steps)
        self.updates = start_updates
        self.skipped = 0
        self.target_copies = counters.updates() // self.algo.target_update
        self.stats_window = UpdateStats(self.index, settings.stats_interval_seconds, stats_queue)
        self.parameters = list(self.shared.q_net.parameters())
        if self.primary:
            self.publish()

    def step(self) -> bool:
        """t_max vector steps of acting, then one Hogwild gradient step on what was seen."""
        for _ in range(self.algo.t_max):
            if self.actor.budget_spent():
                break
            self.actor.step()
        transitions = self.actor.take_transitions()
        if not transitions:
            return False
        rows = rows_from(transitions)
        out = td_loss(self.shared.q_net, self.shared.target_net, rows["obs"], rows["action"],
                      rows["reward"], rows["next_obs"], rows["discount"], self.algo.double, self.algo.loss,
                      self.algo.huber_delta)
        loss = out.loss.item()
        if not loss_is_finite(loss, self.counters.updates() + 1, self.algo.nonfinite):
            self.skipped += 1
            return False
        grad_norm = float(gradient_step(self.parameters, self.shared.optimizer, out.loss, self.algo.max_grad_norm))
        self.updates += 1
        self.counters.set_learner_updates(self.index, self.updates)
        self.counters.set_actor_updates(self.index, self.counters.updates())
        if self.primary:
            copies = self.counters.updates() // self.algo.target_update
            if copies > self.target_copies:
                update_target(self.shared.q_net, self.shared.target_net, self.algo.target_tau)
                self.target_copies = copies
            if self.updates % self.algo.publish_interval == 0:
                self.publish()
        self.stats_window.add(loss, out.q_mean.item(), grad_norm, self.updates, self.skipped)
        return True

    def publish(self) -> None:
        self.params.publish(self.shared.q_net, self.counters.updates())

    def save_last(self) -> None:
        if not self.primary:
            return
        learner_updates = self.counters.learner_updates()  # one read: the others keep updating
        state = {
            **self.settings.checkpoint_meta,
            "q_net": {k: v.detach().clone() for k, v in self.shared.q_net.state_dict().items()},
            "target_net": {k: v.detach().clone() for k, v in self.shared.target_net.state_dict().items()},
            "optimizer": self.shared.optimizer.state_dict(),
            "updates": sum(learner_updates),
            "learner_updates": learner_updates,
            "env_steps": self.counters.total_env_steps(),
        }
        save_checkpoint(Path(self.settings.checkpoint_dir) / rundir.LAST, state)

    # -- the process loop (workers.child) ---------------------------------------------------
    def work(self) -> bool:
        if self.actor.budget_spent():
            return False
        self.step()  # stops acting at the budget too
        return True

    def save(self) -> None:
        self.save_last()

    def finish(self, main_alive: bool) -> None:
        self.stats_window.flush(self.updates, self.skipped)
        if main_alive:
            self.save_last()
        self.actor.close()

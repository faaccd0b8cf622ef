"""The learner: sample replay, take a TD step on Q, refresh Q^-, publish weights.

Runs in its own process (CUDA, when used, is touched only here). It owns the online
network Q, the target network Q^-, the optimizer and the update counter, and is the only
writer of the parameter store and of `last.pt`. It reads the replay and the actors'
env-step counters, and holds updates at `replay_ratio` updates per env step: it waits
when it is ahead of the data (actors wait when it falls too far behind).

One update, top to bottom (see losses.py for the math):
    batch ~ replay                      (uniform)
    y     = R + gamma^(n) Q^-(s', argmax_a Q(s', a))
    loss  = Huber(y - Q(s, a))
    theta <- Adam(theta, clip(grad loss))
    every C updates: Q^- <- tau Q + (1 - tau) Q^-
    every P updates: publish theta to the actors
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from asyncql_cli.checkpoint import save_checkpoint
from asyncql_cli.losses import td_loss, update_target
from asyncql_cli.networks import build_network
from asyncql_cli.params import ParameterStore
from asyncql_cli.priority import PrioritizedSampler
from asyncql_cli.process import Counters
from asyncql_cli.replay import ReplayStorage, UniformSampler


class NonFiniteLoss(RuntimeError):
    pass


@dataclass(frozen=True)
class LearnerSettings:
    obs_shape: tuple[int, ...]
    num_actions: int
    network: dict[str, Any]
    device: str
    lr: float
    adam_eps: float
    double: bool
    loss: str
    huber_delta: float
    batch_size: int
    target_update: int
    target_tau: float
    max_grad_norm: Optional[float]
    replay_ratio: float
    learning_starts: int
    publish_interval: int
    nonfinite: str
    seed: int
    stats_interval_seconds: float
    checkpoint_dir: str
    checkpoint_interval_seconds: float
    checkpoint_meta: dict[str, Any]
    prioritized: bool = False
    alpha: float = 0.6
    beta: float = 0.4
    beta_final: float = 1.0
    priority_eps: float = 1e-6
    total_env_steps: int = 1
    lr_schedule: str = "constant"
    lr_final: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Learner:
    def __init__(self, settings: LearnerSettings, storage: ReplayStorage, params: ParameterStore,
                 counters: Counters, stats_queue: Any):
        s = settings
        self.s, self.storage, self.params, self.counters, self.stats = (
            settings, storage, params, counters, stats_queue
        )
        torch.manual_seed(s.seed)
        self.device = resolve_device(s.device)
        self.q_net = build_network(s.network, s.obs_shape, s.num_actions).to(self.device)
        self.target_net = build_network(s.network, s.obs_shape, s.num_actions).to(self.device)
        self.target_net.load_state_dict(self.q_net.state_dict())
        self.target_net.requires_grad_(False)
        # fused Adam: one kernel for all parameters, a large share of a small net's step time
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=s.lr, eps=s.adam_eps, fused=True)
        self.sampler: UniformSampler | PrioritizedSampler
        if s.prioritized:
            self.sampler = PrioritizedSampler(storage, s.seed, s.alpha, s.priority_eps)
        else:
            self.sampler = UniformSampler(storage, seed=s.seed)
        self.updates = 0
        self.skipped = 0
        self._sums = {"loss": 0.0, "q_mean": 0.0, "grad_norm": 0.0}
        self._count = 0
        self._last_stats = time.monotonic()

    def load_state(self, state: dict[str, Any]) -> None:
        self.q_net.load_state_dict(state["q_net"])
        self.target_net.load_state_dict(state["target_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        self.counters.learner_updates[0] = self.updates
        torch.set_rng_state(state["torch_rng"])
        if isinstance(self.sampler, UniformSampler) and "sampler_rng" in state:
            self.sampler.generator.set_state(state["sampler_rng"])

    def publish(self) -> None:
        self.params.publish(self.q_net, self.updates)

    def data_allows_update(self) -> bool:
        """Ready once `learning_starts` rows exist; then at most replay_ratio per env step."""
        if self.storage.size() < max(self.s.learning_starts, self.s.batch_size):
            return False
        learnable = self.counters.total_env_steps() - self.s.learning_starts
        return self.updates < self.s.replay_ratio * max(learnable, 0) + 1

    def update(self) -> bool:
        """One gradient step; returns False if no batch could be drawn or it was skipped."""
        if isinstance(self.sampler, PrioritizedSampler):
            batch = self.sampler.sample(self.s.batch_size, self.beta())
            sampled_logical = None if batch is None else self.sampler.logical_of(batch.index)
        else:
            batch = self.sampler.sample(self.s.batch_size)
        if batch is None:
            return False
        batch = batch.to(self.device)
        out = td_loss(
            self.q_net, self.target_net, batch.obs, batch.action, batch.reward,
            batch.next_obs, batch.discount, self.s.double, self.s.loss, self.s.huber_delta,
            weight=batch.weight,
        )
        if not torch.isfinite(out.loss):
            if self.s.nonfinite == "stop":
                raise NonFiniteLoss(
                    f"non-finite loss ({out.loss.item()}) at update {self.updates + 1}; "
                    "weights seen by actors are from the last finite update"
                )
            self.skipped += 1
            return False
        if self.s.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate()
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        max_norm = self.s.max_grad_norm if self.s.max_grad_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.q_net.parameters(), max_norm)
        self.optimizer.step()
        if isinstance(self.sampler, PrioritizedSampler):
            self.sampler.update_priorities(batch.index, out.td_error, sampled_logical)
        self.updates += 1
        if self.updates % self.s.target_update == 0:
            update_target(self.q_net, self.target_net, self.s.target_tau)
        if self.updates % self.s.publish_interval == 0:
            self.publish()
        self.counters.learner_updates[0] = self.updates
        self._accumulate(out.loss.item(), out.q_mean.item(), float(grad_norm))
        return True

    def progress(self) -> float:
        """Fraction of the env-step budget used (drives the beta and lr schedules)."""
        return min(1.0, self.counters.total_env_steps() / self.s.total_env_steps)

    def learning_rate(self) -> float:
        if self.s.lr_schedule == "linear":
            return self.s.lr + (self.s.lr_final - self.s.lr) * self.progress()
        return self.s.lr

    def beta(self) -> float:
        """Importance-sampling exponent, annealed linearly to beta_final over the budget."""
        return self.s.beta + (self.s.beta_final - self.s.beta) * self.progress()

    def _accumulate(self, loss: float, q_mean: float, grad_norm: float) -> None:
        self._sums["loss"] += loss
        self._sums["q_mean"] += q_mean
        self._sums["grad_norm"] += grad_norm
        self._count += 1
        if time.monotonic() - self._last_stats >= self.s.stats_interval_seconds:
            self.flush_stats()

    def flush_stats(self) -> None:
        if self._count:
            means = {k: v / self._count for k, v in self._sums.items()}
            self.stats.put(("learner", means, self.updates, self.skipped))
        self._sums = dict.fromkeys(self._sums, 0.0)
        self._count = 0
        self._last_stats = time.monotonic()

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            **self.s.checkpoint_meta,
            "q_net": {k: v.detach().cpu() for k, v in self.q_net.state_dict().items()},
            "target_net": {k: v.detach().cpu() for k, v in self.target_net.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "updates": self.updates,
            "env_steps": self.counters.total_env_steps(),
            "torch_rng": torch.get_rng_state(),
            **({"sampler_rng": self.sampler.generator.get_state()}
               if isinstance(self.sampler, UniformSampler) else {}),
        }

    def save_last(self) -> None:
        save_checkpoint(Path(self.s.checkpoint_dir) / "last.pt", self.checkpoint_state())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def learner_main(settings: LearnerSettings, storage: ReplayStorage, params: ParameterStore,
                 counters: Counters, stats_queue: Any, stop_event: Any, parent_pid: int,
                 torch_threads: int, resume_state: Optional[dict[str, Any]] = None) -> None:
    """Process entry point: update until told to stop, then write `last.pt`."""
    import traceback

    from asyncql_cli.process import init_child, parent_alive

    init_child("learner-0", parent_pid, torch_threads)
    heartbeat_slot = -1
    try:
        learner = Learner(settings, storage, params, counters, stats_queue)
        if resume_state is not None:
            learner.load_state(resume_state)
        learner.publish()
        last_checkpoint = time.monotonic()
        while not stop_event.is_set() and parent_alive(parent_pid):
            counters.beat(heartbeat_slot)
            if not (learner.data_allows_update() and learner.update()):
                time.sleep(0.001)
            if time.monotonic() - last_checkpoint >= settings.checkpoint_interval_seconds:
                learner.save_last()
                last_checkpoint = time.monotonic()
        learner.flush_stats()
        if parent_alive(parent_pid):
            learner.save_last()
        stats_queue.put(("learner_done", learner.updates))
    except Exception as exc:
        stats_queue.put(("error", "learner-0", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        raise SystemExit(1) from None

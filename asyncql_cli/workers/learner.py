"""The learner: sample replay, take a TD step on Q, refresh Q^-, publish weights.

Runs in its own process (CUDA, when used, is touched only here). It owns the online network
Q, the target network Q^-, the optimizer, its update counter and, with prioritized replay, the
sum tree; it is the only writer of its parameter store and of its last-checkpoint file. It
reads the replay and the actors' env-step counters, and holds updates at `replay_ratio` updates
per env step: it waits when it is ahead of the data (actors wait when it falls too far behind).

One update, top to bottom (algo/losses.py has the math):
    batch ~ replay                                  (uniform, or prioritized with weights w)
    y     = R + gamma^(n) Q^-(s', argmax_a Q(s', a))  (double DQN)
    loss  = mean w * Huber(y - Q(s, a))
    theta <- Adam(theta, clip(grad loss))
    every C updates: Q^- <- tau Q + (1 - tau) Q^-
    every P updates: publish theta to the actors

One host sync per update (`loss.item()`, before the step: a non-finite loss never reaches the
weights; with fp16 a second one, the GradScaler's scale, tells a skipped step); every other device
value (gradient norm, mean Q, TD errors for priorities) is read without waiting. With `prefetch`,
batch k+1 is drawn while the device computes update k.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from asyncql_cli import rundir
from asyncql_cli.algo.hogwild import SharedModel
from asyncql_cli.algo.losses import td_loss, update_target
from asyncql_cli.algo.networks import build_network
from asyncql_cli.algo.update import gradient_step, loss_is_finite
from asyncql_cli.checkpoint import save_checkpoint
from asyncql_cli.config.schema import AlgoConfig, BufferConfig, NetworkConfig
from asyncql_cli.envs.make import EnvSpec
from asyncql_cli.replay.batch import Batch
from asyncql_cli.replay.prioritized import PrioritizedSampler
from asyncql_cli.replay.uniform import UniformSampler
from asyncql_cli.shm.counters import Counters
from asyncql_cli.shm.params import ParameterStore
from asyncql_cli.workers.device import (
    PinnedStaging,
    WeightPublisher,
    autocast,
    bound_compile_threads,
    compile_forwards,
    describe_device,
    grad_scaler,
    make_optimizer,
    resolve_device,
    use_device,
)
from asyncql_cli.workers.stats import UpdateStats

IDLE_SECONDS = 0.001  # the learner's wait when it is ahead of the data


@dataclass(frozen=True)
class LearnerSettings:
    index: int  # learner k of K; learner 0 is the primary
    env: EnvSpec
    network: NetworkConfig
    algo: AlgoConfig
    buffer: BufferConfig
    device: str  # parallelism.learner_device
    seed: int  # network initialisation
    sampler_seed: int  # different for every learner and every generation of a resumed run
    learning_starts: int
    total_env_steps: int  # drives the beta and learning-rate schedules
    stats_interval_seconds: float
    checkpoint_dir: str
    checkpoint_meta: dict[str, Any]
    torch_threads: int = 1


def to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


class Learner:
    IDLE_SECONDS = IDLE_SECONDS

    def __init__(self, settings: LearnerSettings, storage: Any, params: ParameterStore, counters: Counters,
                 stats_queue: Any, shared: Optional[SharedModel] = None):
        self.settings, self.algo, self.storage, self.params, self.counters, self.stats = (
            settings, settings.algo, storage, params, counters, stats_queue)
        algo = settings.algo
        torch.manual_seed(settings.seed)
        self.shared = shared
        self.primary = settings.index == 0
        self.device = torch.device("cpu") if shared is not None else resolve_device(settings.device)
        use_device(self.device)
        if shared is not None:  # Hogwild: the shared tensors are the model (CPU shared memory)
            self.q_net, self.target_net, self.optimizer = shared.q_net, shared.target_net, shared.optimizer
        else:
            shape, actions = settings.env.obs_shape, settings.env.num_actions
            self.q_net = build_network(settings.network, shape, actions).to(self.device)
            self.target_net = build_network(settings.network, shape, actions).to(self.device)
            self.target_net.load_state_dict(self.q_net.state_dict())
            self.target_net.requires_grad_(False)
            self.optimizer = make_optimizer(list(self.q_net.parameters()), algo.lr, algo.adam_eps, algo.amp)
        self.parameters = list(self.q_net.parameters())
        self.publisher = WeightPublisher(params, self.parameters, self.device)
        self.target_copies = 0
        self.ready = False
        self.prioritized = settings.buffer.name == "prioritized"
        self.sampler: UniformSampler | PrioritizedSampler = (
            PrioritizedSampler(storage, settings.sampler_seed, settings.buffer.alpha, settings.buffer.priority_eps)
            if self.prioritized else UniformSampler(storage, settings.sampler_seed))
        self.updates = 0
        self.skipped = 0  # non-finite losses skipped (algo.nonfinite=skip) and fp16 overflow steps
        self.stats_window = UpdateStats(settings.index, settings.stats_interval_seconds, stats_queue)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick the fastest convolutions once
        self.staging = PinnedStaging(self.device)
        self.scaler = grad_scaler(self.device, algo.amp)
        self.scale = self.scaler.get_scale() if self.scaler is not None else 1.0
        self.forward_q, self.forward_target = self.q_net, self.target_net
        if algo.compile:
            bound_compile_threads(settings.torch_threads)
            row = storage.gather(torch.zeros(1, dtype=torch.long))["obs"]  # the storage decides the dtype
            example = torch.zeros((algo.batch_size, *row.shape[1:]), dtype=row.dtype, device=self.device)
            self.forward_q, self.forward_target = compile_forwards(self.q_net, self.target_net, example, algo.amp)
        self.next: Optional[Batch] = None  # the batch prefetched during the previous update
        stats_queue.put(("device", settings.index, "cpu (shared, Hogwild)" if shared else describe_device(self.device)))

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (in shared mode the main process has already loaded the
        shared weights and moments; only this learner's counters are restored)."""
        if self.shared is None:
            self.q_net.load_state_dict(state["q_net"])
            self.target_net.load_state_dict(state["target_net"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler is not None and "grad_scaler" in state:
                self.scaler.load_state_dict(state["grad_scaler"])
                self.scale = self.scaler.get_scale()
        # shared: the main process restored every learner's count into the counters already
        index = self.settings.index
        self.updates = int(state["updates"]) if self.shared is None else self.counters.learner_updates_of(index)
        self.counters.set_learner_updates(self.settings.index, self.updates)
        self.target_copies = self.global_updates() // self.algo.target_update
        torch.set_rng_state(state["torch_rng"])

    def global_updates(self) -> int:
        """Updates of the network this learner trains: its own, or all learners' (shared)."""
        return self.counters.updates() if self.shared is not None else self.updates

    def publish(self) -> None:
        self.publisher.request(self.global_updates())

    def data_allows_update(self) -> bool:
        """Ready once `learning_starts` rows exist; then at most replay_ratio updates per env step
        for each network (shared learners hold the ratio together)."""
        if not self.ready:  # the replay only grows: once ready, no need to look again
            self.ready = self.storage.size() >= max(self.settings.learning_starts, self.algo.batch_size)
            if not self.ready:
                return False
        learnable = self.counters.total_env_steps() - self.settings.learning_starts
        return self.global_updates() < self.algo.replay_ratio * max(learnable, 0) + 1

    def draw(self) -> Optional[Batch]:
        """A batch from the replay, its copy to the device started; None if none can be drawn."""
        if self.prioritized:
            batch = self.sampler.sample(self.algo.batch_size, self.beta())
        else:
            batch = self.sampler.sample(self.algo.batch_size)
        return None if batch is None else self.staging.to_device(batch)

    def update(self) -> bool:
        """One gradient step; False if no batch could be drawn or the step was skipped.

        With `prefetch`, batch k+1 is drawn (its copy queued) right after update k's forward
        passes are queued and before update k's one host sync, so on CUDA the host samples while
        the device computes. All of it runs on this one thread, so the sum tree keeps one writer;
        batch k+1 is drawn before update k's new priorities are written (one batch of lag, as in
        Ape-X). For the uniform sampler prefetching changes when a batch is drawn, never which.

        A weight copy that has landed since the last call is published first, whatever this
        update then does (skipped or not), so actors never wait on a skipped step."""
        self.publisher.poll()
        batch = self.next if self.next is not None else self.draw()
        self.next = None
        if batch is None:
            return False
        with autocast(self.device, self.algo.amp):
            out = td_loss(self.forward_q, self.forward_target, batch.obs, batch.action, batch.reward,
                          batch.next_obs, batch.discount, self.algo.double, self.algo.loss, self.algo.huber_delta,
                          weight=batch.weight)
        if self.algo.prefetch:
            self.next = self.draw()
        # queued before the sync below, so it is on the host by then (no second wait)
        td_error = out.td_error.to("cpu", non_blocking=True) if self.prioritized else None
        loss = out.loss.item()  # the one host sync of an update: finiteness check and stats
        if not loss_is_finite(loss, self.updates + 1, self.algo.nonfinite):
            self.skipped += 1
            return False
        if self.algo.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate()
        grad_norm = gradient_step(self.parameters, self.optimizer, out.loss, self.algo.max_grad_norm, self.scaler)
        if self.prioritized:
            self.sampler.update_priorities(batch.index, td_error, batch.logical)
        if self.scaler_skipped():
            self.skipped += 1
            return False
        self.updates += 1
        self.counters.set_learner_updates(self.settings.index, self.updates)
        if self.primary or self.shared is None:  # one writer for each target network
            copies = self.global_updates() // self.algo.target_update
            if copies > self.target_copies:
                update_target(self.q_net, self.target_net, self.algo.target_tau)
                self.target_copies = copies
            if self.updates % self.algo.publish_interval == 0:
                self.publish()
        self.stats_window.add(loss, out.q_mean, grad_norm, self.updates, self.skipped)
        return True

    def scaler_skipped(self) -> bool:
        """fp16: whether the GradScaler skipped this step (its gradients overflowed; the scale
        then drops). Such a step changed no weight: it counts as skipped, not as an update, and
        triggers no target update. One extra host sync per update, for fp16 only."""
        if self.scaler is None:
            return False
        scale, self.scale = self.scale, self.scaler.get_scale()
        return self.scale < scale

    def progress(self) -> float:
        """Fraction of the env-step budget used (drives the beta and lr schedules)."""
        return min(1.0, self.counters.total_env_steps() / self.settings.total_env_steps)

    def learning_rate(self) -> float:
        if self.algo.lr_schedule == "linear":
            return self.algo.lr + (self.algo.lr_final - self.algo.lr) * self.progress()
        return self.algo.lr

    def beta(self) -> float:
        """Importance-sampling exponent, annealed linearly to beta_final over the budget."""
        b = self.settings.buffer
        return b.beta + (b.beta_final - b.beta) * self.progress()

    def checkpoint_state(self) -> dict[str, Any]:
        learner_updates = self.counters.learner_updates()  # one read: other learners keep updating
        return {
            **self.settings.checkpoint_meta,
            "q_net": to_cpu(self.q_net.state_dict()),
            "target_net": to_cpu(self.target_net.state_dict()),
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "updates": sum(learner_updates) if self.shared is not None else self.updates,
            "learner_updates": learner_updates,
            "learner_index": self.settings.index,
            "env_steps": self.counters.total_env_steps(),
            "torch_rng": torch.get_rng_state(),
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            **({"sampler": self.sampler.state()} if isinstance(self.sampler, PrioritizedSampler) else {}),
        }

    def save_last(self) -> None:
        """Independent learners each write their own file; shared ones only the primary."""
        if self.shared is None or self.primary:
            name = rundir.last_checkpoint_name(self.settings.index)
            save_checkpoint(Path(self.settings.checkpoint_dir) / name, self.checkpoint_state())

    # -- the process loop (workers.child) ---------------------------------------------------
    def start(self) -> None:
        if self.primary or self.shared is None:
            self.publish()

    def work(self) -> bool:
        if self.data_allows_update():
            return self.update()
        self.publisher.poll()  # waiting for data: a landed weight copy is still published
        return False

    def save(self) -> None:
        self.save_last()

    def finish(self, main_alive: bool) -> None:
        self.stats_window.flush(self.updates, self.skipped)
        self.publisher.flush()
        if main_alive:
            self.save_last()


def start_learner(settings: LearnerSettings, storage: Any, params: ParameterStore, counters: Counters,
                  stats_queue: Any, resume_state: Optional[dict[str, Any]] = None,
                  shared: Optional[SharedModel] = None) -> Learner:
    """A learner ready to update: built, restored from `resume_state`, its first weights published
    (the worker class `run_child` builds in a learner process)."""
    learner = Learner(settings, storage, params, counters, stats_queue, shared)
    if resume_state is not None:
        learner.load_state(resume_state)
    learner.start()
    return learner

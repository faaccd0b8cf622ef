"""The learner: sample replay, take a TD step on Q, refresh Q^-, publish weights.

Runs in its own process (CUDA, when used, is touched only here). It owns the online
network Q, the target network Q^-, the optimizer and the update counter, and is the only
writer of the parameter store and of `last.pt`. It reads the replay and the actors'
env-step counters, and holds updates at `replay_ratio` updates per env step: it waits
when it is ahead of the data (actors wait when it falls too far behind).

One update, top to bottom (see losses.py for the math):
    batch ~ replay                      (uniform or prioritized)
    y     = R + gamma^(n) Q^-(s', argmax_a Q(s', a))
    loss  = Huber(y - Q(s, a))
    theta <- Adam(theta, clip(grad loss))
    every C updates: Q^- <- tau Q + (1 - tau) Q^-
    every P updates: publish theta to the actors

Keeping a GPU fed (none of these changes what is computed, only when and in what precision):
- one host sync per update (`loss.item()`, before the step: a non-finite loss never reaches
  the weights); every other device value (gradient norm, mean Q, TD errors for priorities)
  is read without waiting for the device;
- `prefetch`: batch k+1 is drawn while the device computes update k (see `Learner.update`);
- batches reach the device through reused pinned host buffers, asynchronously
  (`PinnedStaging`); uint8 frames stay uint8 until the network scales them on the device;
- `amp`: autocast (bf16, or fp16 with a GradScaler) for the forward passes and the loss;
- `compile`: torch.compile of the learner's Q-network forwards, compiled at learner start.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from asyncql_cli.checkpoint import save_checkpoint
from asyncql_cli.hogwild import SharedModel
from asyncql_cli.losses import td_loss, update_target
from asyncql_cli.networks import build_network
from asyncql_cli.optim import Adam
from asyncql_cli.params import ParameterStore
from asyncql_cli.priority import PrioritizedSampler
from asyncql_cli.process import Counters
from asyncql_cli.replay import Batch, ReplayStorage, UniformSampler

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# pinned host buffers batches pass through: batch k+1 is staged while batch k's copy may be queued
STAGING_BUFFERS = 2


class NonFiniteLoss(RuntimeError):
    pass


class CompileFailed(RuntimeError):
    """torch.compile could not compile the Q-network (algo.compile=true)."""


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
    index: int = 0            # learner k of K; learner 0 is the primary
    sharing: str = "independent"  # independent: own Q_k, Q_k^-, optimizer | shared: Hogwild
    prefetch: bool = True     # draw batch k+1 while the device computes update k
    amp: str = "off"          # off | bf16 | fp16: autocast for the forward passes and the loss
    compile: bool = False     # torch.compile the Q-network forwards (compiled in __init__)


def last_checkpoint_name(index: int) -> str:
    """Learner 0 writes last.pt; learner k > 0 (independent sharing) last.learner<k>.pt."""
    return "last.pt" if index == 0 else f"last.learner{index}.pt"


def loss_is_finite(loss: float, update: int, policy: str) -> bool:
    """False for a NaN/inf loss under policy "skip"; raises under "stop" (the default)."""
    if math.isfinite(loss):
        return True
    if policy == "stop":
        raise NonFiniteLoss(
            f"non-finite loss ({loss}) at update {update}; "
            "weights seen by actors are from the last finite update"
        )
    return False


def clip_gradients(grads: list[torch.Tensor], max_norm: Optional[float]) -> torch.Tensor:
    """Scale grads so their global L2 norm is at most max_norm; return the norm before.
    (clip_grad_norm_'s math without its per-call grouping, which costs more than the math
    itself for a small network.)"""
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm is not None:
        torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm


def gradient_step(params: list[torch.nn.Parameter], optimizer: Adam | torch.optim.Optimizer,
                  loss: torch.Tensor, max_grad_norm: Optional[float],
                  scaler: Optional[torch.amp.GradScaler] = None) -> torch.Tensor:
    """theta <- optimizer(theta, clip(grad loss)), queued without waiting for the device;
    returns the gradient norm before clipping (a tensor on the parameters' device).

    With a GradScaler (amp fp16) the loss is scaled for backward, the gradients are unscaled
    before clipping, and a step whose gradients overflowed is skipped on the device."""
    for param in params:  # zero_grad(set_to_none=True), without its profiler hook
        param.grad = None
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    norm = clip_gradients([p.grad for p in params if p.grad is not None], max_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return norm


def apply_gradients(params: list[torch.nn.Parameter], optimizer: Adam | torch.optim.Optimizer, loss: torch.Tensor,
                    max_grad_norm: Optional[float]) -> float:
    """`gradient_step`, then wait for it; returns the gradient norm before clipping."""
    return float(gradient_step(params, optimizer, loss, max_grad_norm))


class UpdateStats:
    """Means of loss, Q and gradient norm over a time window, sent to the main process.
    Values may be device tensors: they are summed on the device and read once per window."""

    def __init__(self, index: int, interval_seconds: float, stats_queue: Any):
        self.index, self.interval, self.queue = index, interval_seconds, stats_queue
        self.sums = {"loss": 0.0, "q_mean": 0.0, "grad_norm": 0.0}
        self.count = 0
        self.last = time.monotonic()

    def add(self, loss: float, q_mean: float | torch.Tensor, grad_norm: float | torch.Tensor,
            updates: int, skipped: int) -> None:
        for name, value in (("loss", loss), ("q_mean", q_mean), ("grad_norm", grad_norm)):
            self.sums[name] += value
        self.count += 1
        if time.monotonic() - self.last >= self.interval:
            self.flush(updates, skipped)

    def flush(self, updates: int, skipped: int) -> None:
        if self.count:
            means = {k: float(v) / self.count for k, v in self.sums.items()}
            self.queue.put(("learner", self.index, means, updates, skipped))
        self.sums = dict.fromkeys(self.sums, 0.0)
        self.count = 0
        self.last = time.monotonic()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward passes and the loss (amp "off": a no-op context)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def make_optimizer(params: list[nn.Parameter], lr: float, eps: float, amp: str) -> Adam | torch.optim.Adam:
    """The learner's Adam (optim.py); with fp16 a torch.optim.Adam, which the GradScaler steps
    (both run the same fused kernel and save the same state_dict format)."""
    if amp == "fp16":
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    return Adam(params, lr=lr, eps=eps)


def grad_scaler(device: torch.device, amp: str) -> Optional[torch.amp.GradScaler]:
    """fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def _compile_error(exc: BaseException) -> str:
    inner = getattr(exc, "inner_exception", None) or exc  # dynamo wraps the backend's own error
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return f"{type(inner).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def compile_forwards(q_net: nn.Module, target_net: nn.Module, example_obs: torch.Tensor,
                     amp: str) -> tuple[nn.Module, nn.Module]:
    """torch.compile'd forwards of Q and Q^- (the modules keep their parameters and names, so
    checkpoints and publishing use the plain modules), compiled now on `example_obs` in every
    mode an update calls them in (Q with and without gradients, Q^- without), so compilation
    happens at learner start and a compiler failure is one clear error (CompileFailed) there,
    not a crash in the middle of training. No fallback to eager: asking for compile and
    silently not getting it would make speed comparisons lie."""
    compiled_q, compiled_target = torch.compile(q_net), torch.compile(target_net)
    try:
        with autocast(example_obs.device, amp):
            with torch.no_grad():
                compiled_q(example_obs)
                compiled_target(example_obs)
            compiled_q(example_obs).float().sum().backward()
    except Exception as exc:  # any backend error (no C++ compiler, no Triton, an unsupported op)
        raise CompileFailed(f"algo.compile=true: torch.compile failed on {example_obs.device.type} "
                            f"({_compile_error(exc)}); set algo.compile=false") from None
    finally:
        for param in q_net.parameters():
            param.grad = None
    return compiled_q, compiled_target


@dataclass
class Drawn:
    """A sampled batch on the learner's device (its `index` on the host)."""

    batch: Batch
    logical: Optional[np.ndarray]  # prioritized: the rows' logical positions when drawn


class PinnedStaging:
    """Moves sampled batches to the learner's device without stalling the host.

    CUDA: each batch is copied into one of STAGING_BUFFERS reused pinned host buffers and from
    there to the device with non_blocking=True, so the host goes on (to draw the next batch)
    while the copy waits its turn in the stream. Batch k+1 is staged while batch k's copy may
    still be queued, hence two buffers; a buffer is rewritten only once the event recorded
    after its last copy has completed (by then it has: each update's loss.item() sync lies
    between). CPU: batches are used as sampled (`staged=False`); `staged=True` runs the
    buffer path with unpinned buffers, for tests."""

    def __init__(self, device: torch.device, staged: Optional[bool] = None):
        self.device = device
        self.staged = device.type == "cuda" if staged is None else staged
        self.buffers: list[Optional[dict[str, torch.Tensor]]] = [None] * STAGING_BUFFERS
        self.copied: list[Optional[torch.cuda.Event]] = [None] * STAGING_BUFFERS
        self.turn = 0

    def to_device(self, batch: Batch) -> Batch:
        if not self.staged:
            return batch.to(self.device)
        turn, self.turn = self.turn, (self.turn + 1) % STAGING_BUFFERS
        if self.copied[turn] is not None:
            self.copied[turn].synchronize()
        fields, buffer = batch.tensors(), self.buffers[turn]
        if buffer is None or any(name not in buffer or buffer[name].shape != value.shape
                                 or buffer[name].dtype != value.dtype for name, value in fields.items()):
            pin = self.device.type == "cuda"
            buffer = {name: torch.empty(value.shape, dtype=value.dtype, pin_memory=pin)
                      for name, value in fields.items()}
            self.buffers[turn] = buffer
        moved = batch.to(self.device, buffer)
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self.copied[turn] = event
        return moved


class Learner:
    def __init__(self, settings: LearnerSettings, storage: ReplayStorage, params: ParameterStore,
                 counters: Counters, stats_queue: Any, shared: Optional[SharedModel] = None):
        s = settings
        self.s, self.storage, self.params, self.counters, self.stats = (
            settings, storage, params, counters, stats_queue
        )
        torch.manual_seed(s.seed)
        self.device = resolve_device(s.device)
        self.shared = shared
        self.primary = s.index == 0
        if shared is not None:  # Hogwild: the shared tensors are the model (CPU shared memory)
            self.device = torch.device("cpu")
            self.q_net, self.target_net, self.optimizer = shared.q_net, shared.target_net, shared.optimizer
        else:
            self.q_net = build_network(s.network, s.obs_shape, s.num_actions).to(self.device)
            self.target_net = build_network(s.network, s.obs_shape, s.num_actions).to(self.device)
            self.target_net.load_state_dict(self.q_net.state_dict())
            self.target_net.requires_grad_(False)
            self.optimizer = make_optimizer(list(self.q_net.parameters()), s.lr, s.adam_eps, s.amp)
        self.parameters = list(self.q_net.parameters())
        self.target_copies = 0
        self.ready = False
        self.sampler: UniformSampler | PrioritizedSampler
        if s.prioritized:
            self.sampler = PrioritizedSampler(storage, s.seed, s.alpha, s.priority_eps)
        else:
            self.sampler = UniformSampler(storage, seed=s.seed)
        self.prioritized = isinstance(self.sampler, PrioritizedSampler)
        self.updates = 0
        self.skipped = 0
        self.stats_window = UpdateStats(s.index, s.stats_interval_seconds, stats_queue)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick the fastest convolutions once
        self.staging = PinnedStaging(self.device)
        self.scaler = grad_scaler(self.device, s.amp)
        self.forward_q, self.forward_target = self.q_net, self.target_net
        if s.compile:
            # what a batch's observations look like: gather one row (the storage decides the dtype)
            row = storage.gather(torch.zeros(1, dtype=torch.long))["obs"]
            example = torch.zeros((s.batch_size, *row.shape[1:]), dtype=row.dtype, device=self.device)
            self.forward_q, self.forward_target = compile_forwards(self.q_net, self.target_net, example, s.amp)
        self.next: Optional[Drawn] = None  # the batch prefetched during the previous update

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (in shared mode the main process has already loaded
        the shared weights and moments; only this learner's counters are restored)."""
        if self.shared is None:
            self.q_net.load_state_dict(state["q_net"])
            self.target_net.load_state_dict(state["target_net"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state.get("learner_updates", [state["updates"]])[self.s.index]
                           if self.shared is not None else state["updates"])
        self.counters.learner_updates[self.s.index] = self.updates
        self.target_copies = self.global_updates() // self.s.target_update
        torch.set_rng_state(state["torch_rng"])
        if isinstance(self.sampler, UniformSampler) and "sampler_rng" in state:
            self.sampler.generator.set_state(state["sampler_rng"])

    def global_updates(self) -> int:
        """Updates of the network this learner trains: its own, or all learners' (shared)."""
        return self.counters.updates() if self.shared is not None else self.updates

    def publish(self) -> None:
        self.params.publish(self.q_net, self.global_updates())

    def data_allows_update(self) -> bool:
        """Ready once `learning_starts` rows exist; then at most replay_ratio updates per env
        step for each network (shared learners hold the ratio together)."""
        if not self.ready:  # the replay only grows: once ready, no need to look again
            self.ready = self.storage.size() >= max(self.s.learning_starts, self.s.batch_size)
            if not self.ready:
                return False
        learnable = self.counters.total_env_steps() - self.s.learning_starts
        return self.global_updates() < self.s.replay_ratio * max(learnable, 0) + 1

    def draw(self) -> Optional[Drawn]:
        """A batch from the replay, its copy to the device started; None if none can be drawn."""
        logical = None
        if self.prioritized:
            batch = self.sampler.sample(self.s.batch_size, self.beta())
            logical = None if batch is None else self.sampler.logical_of(batch.index)
        else:
            batch = self.sampler.sample(self.s.batch_size)
        return None if batch is None else Drawn(self.staging.to_device(batch), logical)

    def update(self) -> bool:
        """One gradient step; returns False if no batch could be drawn or it was skipped.

        With `prefetch`, batch k+1 is drawn (and its copy queued) right after update k's
        forward passes are queued and before update k's one host sync, so on CUDA the host
        samples while the device computes; the step itself must wait for that sync (a
        non-finite loss never reaches the weights) and then overlaps the bookkeeping below
        and the next update's start. All of it runs on this one thread, so the prioritized
        sum tree keeps one writer and needs no lock; batch k+1 is simply drawn before update
        k's new priorities are written (one batch of lag, as in Ape-X, where priorities
        arrive asynchronously anyway). For the uniform sampler, prefetching changes when a
        batch is drawn, never which: the same seed gives the same batches and weights.
        """
        drawn = self.next if self.next is not None else self.draw()
        self.next = None
        if drawn is None:
            return False
        batch = drawn.batch
        with autocast(self.device, self.s.amp):
            out = td_loss(
                self.forward_q, self.forward_target, batch.obs, batch.action, batch.reward,
                batch.next_obs, batch.discount, self.s.double, self.s.loss, self.s.huber_delta,
                weight=batch.weight,
            )
        if self.s.prefetch:
            self.next = self.draw()
        # queued before the sync below, so it is on the host by then (no second wait)
        td_error = out.td_error.to("cpu", non_blocking=True) if self.prioritized else None
        loss = out.loss.item()  # the one host sync of an update: finiteness check and stats
        if not loss_is_finite(loss, self.updates + 1, self.s.nonfinite):
            self.skipped += 1
            return False
        if self.s.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate()
        grad_norm = gradient_step(self.parameters, self.optimizer, out.loss, self.s.max_grad_norm, self.scaler)
        if self.prioritized:
            self.sampler.update_priorities(batch.index, td_error, drawn.logical)
        self.updates += 1
        self.counters.arrays.learner_updates[self.s.index] = self.updates
        if self.primary or self.shared is None:  # one writer for each target network
            copies = self.global_updates() // self.s.target_update
            if copies > self.target_copies:
                update_target(self.q_net, self.target_net, self.s.target_tau)
                self.target_copies = copies
            if self.updates % self.s.publish_interval == 0:
                self.publish()
        self.stats_window.add(loss, out.q_mean, grad_norm, self.updates, self.skipped)
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

    def flush_stats(self) -> None:
        self.stats_window.flush(self.updates, self.skipped)

    def checkpoint_state(self) -> dict[str, Any]:
        learner_updates = self.counters.learner_updates.tolist()  # one read: other learners keep updating
        return {
            **self.s.checkpoint_meta,
            "q_net": {k: v.detach().cpu() for k, v in self.q_net.state_dict().items()},
            "target_net": {k: v.detach().cpu() for k, v in self.target_net.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "updates": sum(learner_updates) if self.shared is not None else self.updates,
            "learner_updates": learner_updates,
            "learner_index": self.s.index,
            "env_steps": self.counters.total_env_steps(),
            "torch_rng": torch.get_rng_state(),
            **({"sampler_rng": self.sampler.generator.get_state()}
               if isinstance(self.sampler, UniformSampler) else {}),
        }

    def save_last(self) -> None:
        """Independent learners each write their own file; shared ones only the primary."""
        if self.shared is None or self.primary:
            save_checkpoint(Path(self.s.checkpoint_dir) / last_checkpoint_name(self.s.index),
                            self.checkpoint_state())


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
                 torch_threads: int, resume_state: Optional[dict[str, Any]] = None,
                 shared: Optional[SharedModel] = None) -> None:
    """Process entry point: update until told to stop, then write the last checkpoint."""
    import traceback

    from asyncql_cli.process import init_child, parent_alive

    role = f"learner-{settings.index}"
    init_child(role, parent_pid, torch_threads)
    heartbeat_slot = counters.learner_slot(settings.index)
    try:
        learner = Learner(settings, storage, params, counters, stats_queue, shared)
        if resume_state is not None:
            learner.load_state(resume_state)
        if learner.primary or shared is None:
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
    except Exception as exc:
        stats_queue.put(("error", role, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        raise SystemExit(1) from None

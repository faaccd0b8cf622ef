"""The learner's device: where it runs, mixed precision, compilation, and how batches and
weights cross between host and device.

Keeping a GPU fed changes when and in what precision things are computed, never what:
- batches reach the device through reused pinned host buffers, asynchronously (`PinnedStaging`);
  uint8 frames stay uint8 until the network scales them on the device;
- weights go back through one persistent pinned buffer and a CUDA event (`WeightPublisher`): the
  copy is queued without waiting, and the parameter store's version changes only once the copy
  has landed, so actors never spin on a version held odd across a device sync;
- `amp`: autocast (bf16, or fp16 with a GradScaler) for the torso and the loss, with autocast's
  weight cache off (a no-grad forward and a graded one in one autocast block would otherwise
  share cast weights: pytorch#105211, #112583) and the Q head in float32 (algo/networks.py);
- `compile`: torch.compile of the learner's Q-network forwards, at learner start.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Optional, Protocol

import torch
from torch import nn

from asyncql_cli.algo.optim import Adam
from asyncql_cli.replay.batch import Batch
from asyncql_cli.shm.params import ParameterStore

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# pinned host buffers batches pass through: batch k+1 is staged while batch k's copy may be queued
STAGING_BUFFERS = 2
COMPILE_THREADS_VARIABLE = "TORCHINDUCTOR_COMPILE_THREADS"


class CompileFailed(RuntimeError):
    """torch.compile could not compile the Q-network (algo.compile=true)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def use_device(device: torch.device) -> None:
    """Make `device` this process's current CUDA device (`cuda:N` allocations, events and
    checks then all mean GPU N, not GPU 0). A bare `cuda` already means the current device
    (and torch.cuda.set_device refuses a device without an index)."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward passes and the loss (amp "off": a no-op context). The
    weight cache is off: casts are redone per forward, so a no-grad forward never hands its cast
    weights to a graded one."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp], cache_enabled=False)


def make_optimizer(params: list[nn.Parameter], lr: float, eps: float, amp: str) -> Adam | torch.optim.Adam:
    """The learner's Adam (algo/optim.py); with fp16 a torch.optim.Adam, which the GradScaler
    steps (both run the same fused kernel and save the same state_dict format)."""
    if amp == "fp16":
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    return Adam(params, lr=lr, eps=eps)


def grad_scaler(device: torch.device, amp: str) -> Optional[torch.amp.GradScaler]:
    """fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def bound_compile_threads(threads: int) -> None:
    """Inductor's compile workers, like torch's own threads, stay within this process's share of
    the cores. Inductor reads the variable when its config is first imported (at the first
    compile); if that has happened already, its setting is changed too. A value the user set
    stands."""
    if COMPILE_THREADS_VARIABLE in os.environ:
        return
    os.environ[COMPILE_THREADS_VARIABLE] = str(threads)
    inductor_config = sys.modules.get("torch._inductor.config")
    if inductor_config is not None:
        inductor_config.compile_threads = threads


def _compile_error(exc: BaseException) -> str:
    inner = getattr(exc, "inner_exception", None) or exc  # dynamo wraps the backend's own error
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return f"{type(inner).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def compile_forwards(q_net: nn.Module, target_net: nn.Module, example_obs: torch.Tensor,
                     amp: str) -> tuple[nn.Module, nn.Module]:
    """torch.compile'd forwards of Q and Q^- (the modules keep their parameters and names, so
    checkpoints and publishing use the plain modules), compiled now on `example_obs` in every
    mode an update calls them in (Q with and without gradients, Q^- without), so a compiler
    failure is one clear error (CompileFailed) at learner start, not a crash mid-training. No
    fallback to eager: asking for compile and silently not getting it would make speed
    comparisons lie."""
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


class PinnedStaging:
    """Moves sampled batches to the learner's device without stalling the host.

    CUDA: each batch is copied into one of STAGING_BUFFERS reused pinned host buffers and from
    there to the device with non_blocking=True, so the host goes on (to draw the next batch)
    while the copy waits its turn in the stream. A buffer is rewritten only once the event
    recorded after its last copy has completed. CPU: batches are used as sampled
    (`staged=False`); `staged=True` runs the buffer path with unpinned buffers, for tests."""

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


class CopyEvent(Protocol):
    """What `WeightPublisher` needs of a CUDA event: whether the work before it is done, and a wait."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...


class _Landed:
    """The event of a host-to-host copy: done when issued."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None


class WeightPublisher:
    """The learner's side of the parameter store.

    CPU parameters are copied straight in. CUDA parameters are copied into one persistent pinned
    host buffer with non_blocking=True and an event recorded after the copy; `poll()` publishes
    (bumps the store's version) once the event has completed, so no publish waits for the device
    and the store is never left odd across a sync. A request while a copy is in flight is
    remembered and served when that copy has landed (the newest weights win). `deferred=True` on
    CPU runs that path with an unpinned buffer, for tests (`record_copy` makes the events)."""

    def __init__(self, store: ParameterStore, params: list[torch.nn.Parameter], device: torch.device,
                 deferred: Optional[bool] = None):
        self.store, self.params, self.device = store, params, device
        self.deferred = device.type == "cuda" if deferred is None else deferred
        self.pinned: list[torch.Tensor] = []
        if self.deferred:
            sizes = [p.numel() for p in params]
            flat = torch.empty(sum(sizes), dtype=torch.float32, pin_memory=device.type == "cuda")
            self.pinned = [chunk.view(p.shape) for chunk, p in zip(flat.split(sizes), params)]
        self.in_flight: Optional[tuple[CopyEvent, int]] = None
        self.wanted: Optional[int] = None  # updates of a request not yet copied

    def request(self, updates: int) -> None:
        if not self.deferred:
            self.store.publish_tensors([p.detach() for p in self.params], updates)
            return
        self.wanted = updates
        self.poll()

    def record_copy(self) -> CopyEvent:
        """An event that completes once the copies queued so far have landed."""
        if self.device.type != "cuda":
            return _Landed()
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def poll(self) -> None:
        """Publish a landed copy; start the next wanted one (cheap, never blocks; a no-op when
        nothing is deferred)."""
        if self.in_flight is not None:
            event, updates = self.in_flight
            if not event.query():
                return
            self.store.publish_tensors(self.pinned, updates)
            self.in_flight = None
        if self.wanted is not None:
            with torch.no_grad():
                for host, param in zip(self.pinned, self.params):
                    host.copy_(param.detach().float(), non_blocking=True)
            self.in_flight, self.wanted = (self.record_copy(), self.wanted), None

    def flush(self) -> None:
        """Wait for everything requested and publish it (at the end of a run)."""
        while self.in_flight is not None or self.wanted is not None:
            if self.in_flight is not None:
                self.in_flight[0].synchronize()
            self.poll()


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run in-process work with the thread count every training process gets: the default (one
    thread per core) makes small matmuls spin-wait for each other once another process loads a core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

"""Every private API asyncql uses, each behind a public fallback taken automatically.

Why private at all: on a small Q-network an update is mostly per-call overhead, and these calls
remove some of it (benchmarks/RESULTS.md has the measurements). Each function below tries the
private path while it exists and behaves as expected, and otherwise (the name is gone, or its
signature changed: a TypeError) switches for good to a public equivalent with the same result.
`use_private(False)` forces the public paths (tests run both; `ASYNCQL_PUBLIC_APIS_ONLY=1` does
it for a whole process tree). torch is imported by the functions that use it, not here: the
command imports this module before torch, which the forkserver is importing meanwhile.

| private                                    | public fallback                                   |
|--------------------------------------------|---------------------------------------------------|
| torch._foreach_copy_ / _lerp_ / _mul_      | per-tensor Tensor.copy_ / lerp_ / mul_            |
| torch._foreach_norm                        | torch.nn.utils.get_total_norm, else vector_norm   |
| torch._foreach_add_ + torch._fused_adam_   | torch.optim.adam.adam(fused=True), the functional |
| torch.UntypedStorage._new_shared           | torch.zeros(...).share_memory_()                  |
| multiprocessing.forkserver._forkserver._stop | none needed: the forkserver exits with its parent |
| atexit._run_exitfuncs + os._exit           | SystemExit (Python's normal teardown)             |
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Optional, TypeVar

if TYPE_CHECKING:
    import torch

_PUBLIC_ONLY_ENV = "ASYNCQL_PUBLIC_APIS_ONLY"
_state = {"private": os.environ.get(_PUBLIC_ONLY_ENV) != "1"}
_broken: set[str] = set()  # private paths that failed once and are not tried again
T = TypeVar("T")


@contextlib.contextmanager
def use_private(enabled: bool) -> Iterator[None]:
    """Within the block, take the private paths (True) or only the public ones (False)."""
    previous = _state["private"]
    _state["private"] = enabled
    try:
        yield
    finally:
        _state["private"] = previous


def _try_private(name: str, private: Callable[[], T], public: Callable[[], T]) -> T:
    if _state["private"] and name not in _broken:
        try:
            return private()
        except (AttributeError, TypeError, NotImplementedError):  # gone or changed: the public path
            _broken.add(name)
    return public()


# ----------------------------------------------------------------- torch tensor lists
def foreach_copy_(destinations: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    import torch

    def public() -> None:
        for destination, source in zip(destinations, sources):
            destination.copy_(source)

    _try_private("foreach_copy_", lambda: torch._foreach_copy_(destinations, sources), public)


def foreach_lerp_(destinations: list[torch.Tensor], ends: list[torch.Tensor], weight: float) -> None:
    """destination <- destination + weight * (end - destination), for each pair."""
    import torch

    def public() -> None:
        for destination, end in zip(destinations, ends):
            destination.lerp_(end, weight)

    _try_private("foreach_lerp_", lambda: torch._foreach_lerp_(destinations, ends, weight), public)


def foreach_mul_(tensors: list[torch.Tensor], factor: torch.Tensor) -> None:
    import torch

    def public() -> None:
        for tensor in tensors:
            tensor.mul_(factor)

    _try_private("foreach_mul_", lambda: torch._foreach_mul_(tensors, factor), public)


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all tensors together (as one vector)."""
    import torch

    def public() -> torch.Tensor:
        if hasattr(torch.nn.utils, "get_total_norm"):
            return torch.nn.utils.get_total_norm(tensors, foreach=False)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))

    return _try_private(
        "total_norm", lambda: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors))), public)


def fused_adam_(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], lr: float, beta1: float,
                beta2: float, eps: float) -> None:
    """One Adam step (step counts included) with torch's fused kernel, in place."""
    import torch

    def private() -> None:
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=lr,
                           beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps, maximize=False,
                           grad_scale=None, found_inf=None)

    def public() -> None:
        from torch.optim.adam import adam

        adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, fused=True, amsgrad=False, beta1=beta1,
             beta2=beta2, lr=lr, weight_decay=0.0, eps=eps, maximize=False)

    with torch.no_grad():  # in-place updates of leaf parameters, as in Optimizer.step
        _try_private("fused_adam_", private, public)


# ----------------------------------------------------------------- shared memory
def shared_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """A zero-filled uint8 tensor in new shared memory. The private path takes the pages the OS
    hands out zeroed on first touch instead of filling them and copying into shared memory
    (the public path), which for gigabytes of Atari frames is the difference between well under
    a second and tens of seconds."""
    import torch

    count = 1
    for size in shape:
        count *= int(size)

    def private() -> torch.Tensor:
        storage = torch.UntypedStorage._new_shared(count)  # what share_memory_ allocates with
        return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)

    return _try_private("shared_uint8", private,
                        lambda: torch.zeros(shape, dtype=torch.uint8).share_memory_())


# ----------------------------------------------------------------- processes
def forkserver_pid() -> Optional[int]:
    """The pid of this process's multiprocessing forkserver, if it runs (None if unknown)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    return pid if _state["private"] and isinstance(pid, int) else None


def stop_forkserver(kill: Callable[[int], Any]) -> bool:
    """Kill (with `kill(pid)`) and reap this process's forkserver now; False when it cannot be
    done through the private handle (the forkserver then exits when this process does)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    pid = forkserver_pid()
    if pid is None or not callable(getattr(server, "_stop", None)):
        return False
    kill(pid)
    server._stop()  # closes its pipe, reaps it, removes its socket file
    return True


def exit_without_teardown(code: int) -> None:
    """Exit now: the exit hooks in their usual order (logging, multiprocessing's clean-up), then
    `os._exit`, skipping the teardown of torch's modules. Public fallback: SystemExit."""
    import atexit
    import sys

    run_hooks = getattr(atexit, "_run_exitfuncs", None)
    if not _state["private"] or run_hooks is None:
        raise SystemExit(code)
    run_hooks()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

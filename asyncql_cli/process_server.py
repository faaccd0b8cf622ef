"""The forkserver every child process (actors, learners) is forked from.

A clean Python started once per main process (spawn-like). It imports torch, gymnasium and
the child entry modules up front and never touches CUDA or the main process's state, so it
is as safe as spawn, and each child then starts in milliseconds instead of re-importing
torch. `asyncql train` starts it right after the config validates, so it does those imports
on another core while the main process imports torch itself. No torch import here.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from typing import Any

# Modules every child needs. Not torch._dynamo (0.8 s, which would delay every child's start):
# building a torch.optim optimizer imports it, and the learners' Adam (optim.py) is not one; only
# an fp16 learner (torch.optim.Adam under a GradScaler) or algo.compile imports it, by itself.
CHILD_PRELOAD = ["torch", "gymnasium", "asyncql_cli.actor", "asyncql_cli.learner",
                 "asyncql_cli.actor_learner"]


def process_context() -> Any:
    """The multiprocessing context children are started with."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(CHILD_PRELOAD)
    return ctx


def start_process_server() -> None:
    """Start the forkserver now (it imports CHILD_PRELOAD in the background)."""
    from multiprocessing import forkserver

    process_context()
    forkserver.ensure_running()


def stop_process_server() -> None:
    """Stop the forkserver once every child has been joined, so a run that ends leaves no
    process behind even inside a long-lived Python process (tests, sweeps, notebooks).

    It is killed rather than asked to exit: it owns no resource (no shared memory, no files,
    no children once the run has joined them), and a graceful exit would tear down an
    interpreter holding torch and torch._dynamo, a second or more of every run's wall-clock."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if server is None or pid is None or not hasattr(server, "_stop"):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    server._stop()  # closes its pipe, reaps it, removes its socket file

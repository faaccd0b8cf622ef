"""The forkserver every child process (actors, learners) is forked from.

A clean Python started once per main process (spawn-like). It imports torch, gymnasium and
the child entry modules up front and never touches CUDA or the main process's state, so it
is as safe as spawn, and each child then starts in milliseconds instead of re-importing
torch. `asyncql train` starts it right after the config validates, so it does those imports
on another core while the main process imports torch itself. No torch import here.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

# Modules every child needs. torch._dynamo: the first torch.optim optimizer a process builds
# imports it (about a second on a small machine), on the learner's path to its first update.
CHILD_PRELOAD = ["torch", "torch._dynamo", "gymnasium", "asyncql_cli.actor", "asyncql_cli.learner",
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
    process behind even inside a long-lived Python process (tests, sweeps, notebooks)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None) is not None and hasattr(server, "_stop"):
        server._stop()

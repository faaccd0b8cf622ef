"""The forkserver every child process is forked from.

A clean Python started once per main process (spawn-like): it imports torch, gymnasium and the
workers up front and never touches CUDA or the main process's state, so it is as safe as spawn,
and each child then starts in milliseconds instead of re-importing torch. `asyncql train` starts
it as soon as it knows children will run, so it does those imports on another core while the
main process imports torch itself. It names itself `asyncql:forkserver` in ps. If it dies, the
next child start makes a new one (multiprocessing does), and the children it had live on
(workers/child.py). No torch import here.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from typing import Any, Optional

# Modules every child needs, the title first. Not torch._dynamo (it would delay every child's
# start): building a torch.optim optimizer imports it, and the learners' Adam (algo/optim.py) is
# not one; only an fp16 learner (torch.optim.Adam under a GradScaler) or algo.compile imports it.
CHILD_PRELOAD = ["asyncql_cli.runtime.forkserver_title", "torch", "gymnasium", "asyncql_cli.workers.child",
                 "asyncql_cli.workers.actor", "asyncql_cli.workers.learner", "asyncql_cli.workers.actor_learner",
                 "asyncql_cli.workers.evaluator"]


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


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop_process_server() -> None:
    """Stop the forkserver once every child has been joined, so a run that ends leaves no process
    behind even inside a long-lived Python process (tests, sweeps, notebooks). It is killed, not
    asked to exit: it owns no resource (no shared memory, no files, no children by then), and a
    graceful exit would tear down an interpreter holding torch. Where that cannot be done, it
    exits with this process."""
    from asyncql_cli.compat import stop_forkserver  # compat imports torch: not before the forkserver starts

    stop_forkserver(_kill)


def server_pid() -> Optional[int]:
    """The forkserver's pid, where multiprocessing tells it (for the log)."""
    from asyncql_cli.compat import forkserver_pid  # as in stop_process_server

    return forkserver_pid()

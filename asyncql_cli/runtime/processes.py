"""The process group: every child of a run, started, watched, restarted, stopped, joined.

Used by `asyncql train` (runtime/run.py) and `asyncql bench`. Children are forked from the
forkserver (runtime/forkserver.py). The main process is a child subreaper while the group
lives, so when the forkserver dies its children are re-parented here instead of to init: they
keep running (workers/child.py) and this group reaps them itself. multiprocessing reports such
children as exited with FORKSERVER_GONE (it reads their status from the forkserver's pipe), so
exit codes are taken from `os.waitpid` for them, and a restart starts a new forkserver.

A child is dead when its exit status is known, hung when its heartbeat is older than the
timeout (it is then killed, and treated as crashed). Crashed actors are restarted within the
run's budget; any other crashed child ends the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Optional

from asyncql_cli.procfs import pid_running
from asyncql_cli.runtime.wiring import ChildSpec
from asyncql_cli.workers.child import run_child

log = logging.getLogger("asyncql")

PR_SET_CHILD_SUBREAPER = 36
FORKSERVER_GONE = 255  # what multiprocessing reports for a child whose forkserver died
POLL_SECONDS = 0.02
KILL_JOIN_SECONDS = 2.0


def set_child_subreaper(enabled: bool) -> None:
    """Orphaned descendants are re-parented to this process instead of init (Linux; a no-op
    elsewhere, where a dead forkserver takes its children with it)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(enabled))


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class ProcessGroup:
    def __init__(self, counters: Any, heartbeat_timeout: float, max_restarts: int):
        self.counters = counters
        self.heartbeat_timeout = heartbeat_timeout
        self.max_restarts = max_restarts
        self.restarts = 0
        self.children: dict[str, tuple[Any, ChildSpec]] = {}
        self.reaped: dict[int, int] = {}  # exit codes of children reaped here (forkserver gone)
        self.errors: dict[str, str] = {}  # a child's own last words (from the stats queue), by role
        set_child_subreaper(True)

    # -- lifetimes -------------------------------------------------------------------------
    def start(self, spec: ChildSpec, ctx: Any) -> None:
        """Start a child with SIGINT ignored from its first instruction: a terminal's Ctrl-C goes
        to the whole process group, and a child still importing would die of KeyboardInterrupt."""
        role = spec.context.role
        self.counters.clear_beat(spec.context.heartbeat_slot)  # not watched until the new process beats
        proc = ctx.Process(target=run_child, name=f"asyncql:{role}", daemon=True,
                           args=(spec.context, spec.make_worker, spec.args))
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc.start()
        finally:
            signal.signal(signal.SIGINT, handler)
        self.children[role] = (proc, spec)
        log.info("%s started (pid %d)", role, proc.pid)

    def pids(self) -> dict[str, int]:
        return {role: proc.pid for role, (proc, _) in self.children.items()}

    def exit_code(self, role: str) -> Optional[int]:
        """None while the child runs."""
        proc = self.children[role][0]
        code = proc.exitcode
        if code != FORKSERVER_GONE or proc.pid in self.reaped:
            return self.reaped.get(proc.pid, code)
        try:
            waited, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:  # not re-parented to us (yet): ask /proc
            return None if pid_running(proc.pid) else code
        if waited == 0:
            return None
        self.reaped[proc.pid] = os.waitstatus_to_exitcode(status)
        return self.reaped[proc.pid]

    def alive(self, role: str) -> bool:
        return self.exit_code(role) is None

    def any_alive(self, roles: Optional[list[str]] = None) -> bool:
        return any(self.alive(role) for role in (roles if roles is not None else self.children))

    def kill(self, role: str) -> None:
        proc = self.children[role][0]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_JOIN_SECONDS
        while self.alive(role) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        proc.join(timeout=0)

    # -- watching ----------------------------------------------------------------------------
    def kill_hung(self) -> None:
        """A child whose heartbeat stopped (an env stuck in step(), a deadlock) is killed; the
        next `check` then restarts it or ends the run."""
        for role, (_, spec) in self.children.items():
            silent = self.counters.seconds_since_beat(spec.context.heartbeat_slot)
            if self.alive(role) and silent is not None and silent > self.heartbeat_timeout:
                self.errors[role] = f"no heartbeat for {silent:.0f} s (hung); killed"
                self.kill(role)

    def check(self, drain: Callable[[], None], restart: Callable[[str], ChildSpec], ctx: Any) -> Optional[str]:
        """Kill hung children, restart crashed actors within the budget; the error that ends the
        run, if any. `drain` reads the stats queue (a child's last words arrive before its exit)."""
        self.kill_hung()
        for role, (_, spec) in list(self.children.items()):
            code = self.exit_code(role)
            if code is None:
                continue
            drain()
            cause = self.errors.pop(role, None) or describe_exit(code)
            if not spec.restartable:
                return f"{role} crashed: {cause}"
            if self.restarts >= self.max_restarts:
                return f"{role} crashed and the restart budget ({self.max_restarts}) is spent: {cause}"
            self.restarts += 1
            log.error("%s died (%s); restarting (%d/%d)", role, cause, self.restarts, self.max_restarts)
            self.start(restart(role), ctx)
        return None

    # -- ending ----------------------------------------------------------------------------
    def stop(self, roles: list[str], event: Any, timeout: Optional[float], drain: Callable[[], None],
             forced: Callable[[], bool]) -> None:
        """Set `event` and wait for `roles` to exit, draining meanwhile (a child with queued data
        cannot exit otherwise); kill whatever outlives `timeout` (None: wait while it beats) or a
        forced stop (a second Ctrl-C)."""
        event.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.any_alive(roles):
            drain()
            if forced() or (deadline is not None and time.monotonic() > deadline):
                break
            if deadline is None:
                self.kill_hung()
            time.sleep(POLL_SECONDS)
        for role in roles:
            if self.alive(role):
                log.warning("%s did not stop in time; killing it", role)
                self.kill(role)
            self.children[role][0].join(timeout=0)

    def close(self) -> None:
        """Kill anything still running (after an error), then stop being a subreaper."""
        for role in self.children:
            if self.alive(role):
                self.kill(role)
        set_child_subreaper(False)

"""The one entry point of every child process (actor, learner, actor-learner, evaluator).

`run_child` sets the process up and runs its worker's loop:
- the role as process title (`asyncql:actor-0` in ps and top);
- SIGINT ignored (a terminal's Ctrl-C reaches the whole process group; only the main process
  decides to stop);
- death with the main process: the kernel sends PARENT_DEATH_SIGNAL when our parent dies. The
  parent is the forkserver; the main process is a child subreaper (runtime/processes.py), so if
  the forkserver dies we are re-parented to the main process and live on, and when the main
  process dies the signal comes again. The handler exits only when the main process is gone.
  Loops also poll `parent_alive` (for systems without prctl);
- torch limited to the configured threads, so N processes fit N cores;
- the loop: beat the heartbeat, do one unit of work (or idle), save on the checkpoint timer,
  until the main process sets the stop event; then the worker's last words (flush, save);
- any exception: its text and traceback to the main process on the stats queue, exit 1.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch

from asyncql_cli.procfs import pid_running
from asyncql_cli.shm.counters import Counters

PR_SET_PDEATHSIG = 1
PARENT_DEATH_SIGNAL = signal.SIGUSR2
PARENT_CHECK_SECONDS = 0.2  # loops call parent_alive() every step; /proc is read this often at most
EXIT_MAIN_GONE = 1


class Worker(Protocol):
    IDLE_SECONDS: float  # how long the loop sleeps when `work()` found nothing to do

    def work(self) -> bool:
        """One unit of work (a vector env step, an update, an evaluation); False: nothing to do."""

    def save(self) -> None:
        """Write this worker's checkpoint (on the timer); a no-op for workers without one."""

    def finish(self, main_alive: bool) -> None:
        """Last words after the stop: flush statistics, save, close envs."""


@dataclass(frozen=True)
class ChildContext:
    """What every child gets from the main process besides its worker's own arguments."""

    role: str
    counters: Counters
    heartbeat_slot: int
    stats: Any  # queue to the main process
    stop: Any  # event set by the main process
    main_pid: int
    torch_threads: int
    checkpoint_interval_seconds: Optional[float] = None


def set_process_title(title: str) -> None:
    import setproctitle

    setproctitle.setproctitle(title)


_checked = {"at": 0.0, "alive": True}


def parent_alive(main_pid: int) -> bool:
    """The main process still runs (read at most every PARENT_CHECK_SECONDS)."""
    now = time.monotonic()
    if now - _checked["at"] >= PARENT_CHECK_SECONDS:
        _checked["at"] = now
        _checked["alive"] = pid_running(main_pid)
    return _checked["alive"]


def _die_with_main_process(main_pid: int) -> None:
    def on_parent_death(_signum: int, _frame: Any) -> None:
        if not pid_running(main_pid):
            os._exit(EXIT_MAIN_GONE)

    signal.signal(PARENT_DEATH_SIGNAL, on_parent_death)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)
    except OSError:  # not Linux: parent_alive() in the loops still notices
        pass
    if not pid_running(main_pid):  # it died before prctl took effect
        os._exit(EXIT_MAIN_GONE)


def init_child(role: str, main_pid: int, torch_threads: int) -> None:
    set_process_title(f"asyncql:{role}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_main_process(main_pid)
    torch.set_num_threads(torch_threads)


def report_error(stats: Any, role: str, exc: BaseException) -> None:
    stats.put(("error", role, f"{type(exc).__name__}: {exc}", traceback.format_exc()))


def run_child(context: ChildContext, make_worker: Any, worker_args: tuple) -> None:
    """Process entry: the worker `make_worker(*worker_args)` runs until the stop event or the
    main process's death (a module-level function, so any start method can pickle it)."""
    c = context
    init_child(c.role, c.main_pid, c.torch_threads)
    try:
        worker: Worker = make_worker(*worker_args)
        last_save = time.monotonic()
        while not c.stop.is_set() and parent_alive(c.main_pid):
            c.counters.beat(c.heartbeat_slot)
            if not worker.work():
                time.sleep(worker.IDLE_SECONDS)
            if c.checkpoint_interval_seconds is not None and \
                    time.monotonic() - last_save >= c.checkpoint_interval_seconds:
                worker.save()
                last_save = time.monotonic()
        worker.finish(parent_alive(c.main_pid))
    except Exception as exc:
        report_error(c.stats, c.role, exc)
        raise SystemExit(1) from None

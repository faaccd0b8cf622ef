"""Per-process set-up shared by every child, and the counters children publish.

Every child: takes its role as process title (`asyncql:actor-0` in ps and top), ignores
SIGINT (only the supervisor decides to stop), asks the kernel for SIGTERM when the main
process dies (so a `kill -9` of the parent leaves no orphan), and limits torch to the
configured number of threads so N processes fit N cores.

`Counters` are small shared int64/float64 tensors allocated by the main process; loops that
touch them every step or update go through `Counters.arrays`, numpy views of the same memory
(a numpy scalar read or write costs a fraction of a tensor's). Single-writer rule: actor i
writes only index i of the per-actor arrays; learner k writes only `learner_updates[k]`;
each child writes only its own heartbeat slot (actor i: i, learner k: num_actors + k).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from types import SimpleNamespace

import torch

PR_SET_PDEATHSIG = 1


def set_process_title(title: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:  # pragma: no cover - setproctitle is a dependency; keep comm at least
        try:
            with open("/proc/self/comm", "w") as comm:
                comm.write(title[:15])
        except OSError:
            pass


_birth_ppid = 0
_checked = {"at": 0.0, "alive": True}
PARENT_CHECK_SECONDS = 0.2


def _pid_running(pid: int) -> bool:
    """True while `pid` runs; a zombie (killed, not yet reaped by its own parent) is dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to a signal-0 probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _die_with_parent(main_pid: int) -> None:
    """SIGTERM when our parent dies. The parent is the forkserver (see builders.py), which
    itself exits as soon as the main process is gone, so a `kill -9` of the main process
    takes every child with it."""
    global _birth_ppid
    _birth_ppid = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the parent_alive() poll in the loops still notices
        pass
    if not parent_alive(main_pid):  # it died before prctl took effect
        os._exit(1)


def init_child(role: str, main_pid: int, torch_threads: int) -> None:
    set_process_title(f"asyncql:{role}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(main_pid)
    torch.set_num_threads(torch_threads)


def parent_alive(main_pid: int) -> bool:
    """The process that started us and the main process both still run (checked at most
    every PARENT_CHECK_SECONDS: loops call this every step)."""
    now = time.monotonic()
    if now - _checked["at"] >= PARENT_CHECK_SECONDS:
        _checked["at"] = now
        _checked["alive"] = os.getppid() == _birth_ppid and _pid_running(main_pid)
    return _checked["alive"]


class Counters:
    """Progress counters shared by all processes (allocated in the main process)."""

    FIELDS = ("env_steps", "actor_updates", "learner_updates", "env_steps_offset", "heartbeat")

    def __init__(self, num_actors: int, num_learners: int = 1):
        self.num_actors = num_actors
        self.env_steps = torch.zeros(num_actors, dtype=torch.int64).share_memory_()
        self.actor_updates = torch.zeros(num_actors, dtype=torch.int64).share_memory_()
        self.learner_updates = torch.zeros(num_learners, dtype=torch.int64).share_memory_()
        self.env_steps_offset = torch.zeros(1, dtype=torch.int64).share_memory_()
        # time.time() of each child's last beat: actors first, then learners
        self.heartbeat = torch.zeros(num_actors + num_learners, dtype=torch.float64).share_memory_()

    @property
    def arrays(self) -> SimpleNamespace:
        """The counters as numpy arrays over the same shared memory (made once per process)."""
        if getattr(self, "_arrays", None) is None:
            self._arrays = SimpleNamespace(**{name: getattr(self, name).numpy() for name in self.FIELDS})
        return self._arrays

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_arrays", None)  # numpy views would be pickled as private copies
        return state

    def total_env_steps(self) -> int:
        a = self.arrays
        return int(a.env_steps.sum()) + int(a.env_steps_offset[0])

    def updates(self) -> int:
        """Gradient updates of all learners together."""
        return int(self.arrays.learner_updates.sum())

    def slowest_learner_updates(self) -> int:
        return int(self.arrays.learner_updates.min())

    def learner_slot(self, index: int) -> int:
        return self.num_actors + index

    def beat(self, slot: int) -> None:
        self.arrays.heartbeat[slot] = time.time()

"""Per-process set-up shared by every child, and the counters children publish.

Every child: takes its role as process title (`asyncql:actor-0` in ps and top), ignores
SIGINT (only the supervisor decides to stop), asks the kernel for SIGTERM when the main
process dies (so a `kill -9` of the parent leaves no orphan), and limits torch to the
configured number of threads so N processes fit N cores.

`Counters` are small shared int64/float64 tensors allocated by the main process.
Single-writer rule: actor i writes only index i of the per-actor arrays; learner k writes
only `learner_updates[k]`; each child writes only its own heartbeat slot (actor i: i,
learner k: num_actors + k).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

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


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the heartbeat poll in the loops still notices
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def init_child(role: str, parent_pid: int, torch_threads: int) -> None:
    set_process_title(f"asyncql:{role}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    torch.set_num_threads(torch_threads)


def parent_alive(parent_pid: int) -> bool:
    return os.getppid() == parent_pid


class Counters:
    """Progress counters shared by all processes (allocated in the main process)."""

    def __init__(self, num_actors: int, num_learners: int = 1):
        self.num_actors = num_actors
        self.env_steps = torch.zeros(num_actors, dtype=torch.int64).share_memory_()
        self.actor_updates = torch.zeros(num_actors, dtype=torch.int64).share_memory_()
        self.learner_updates = torch.zeros(num_learners, dtype=torch.int64).share_memory_()
        self.env_steps_offset = torch.zeros(1, dtype=torch.int64).share_memory_()
        # time.time() of each child's last beat: actors first, then learners
        self.heartbeat = torch.zeros(num_actors + num_learners, dtype=torch.float64).share_memory_()

    def total_env_steps(self) -> int:
        return int(self.env_steps.sum()) + int(self.env_steps_offset[0])

    def updates(self) -> int:
        """Gradient updates of all learners together."""
        return int(self.learner_updates.sum())

    def slowest_learner_updates(self) -> int:
        return int(self.learner_updates.min())

    def learner_slot(self, index: int) -> int:
        return self.num_actors + index

    def beat(self, slot: int) -> None:
        self.heartbeat[slot] = time.time()

"""Process-tree helpers for tests: find an asyncql run's children and prove they are gone.

Reads /proc directly (Linux), so tests need nothing beyond the project's dependencies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional


def _status(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return fields


def alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    state = _status(pid).get("State", "")
    return bool(state) and not state.startswith("Z")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of `root`: pid -> command line (process title)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _status(int(entry)).get("PPid")
            if ppid is not None:
                parents[int(entry)] = int(ppid)
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found and alive(pid):
                found[pid] = cmdline(pid)
                frontier.append(pid)
    return found


def roles(root: int) -> dict[str, int]:
    """asyncql role -> pid among `root`'s descendants (from the `asyncql:<role>` titles)."""
    out: dict[str, int] = {}
    for pid, title in descendants(root).items():
        if title.startswith("asyncql:"):
            out[title.split()[0].removeprefix("asyncql:")] = pid
    return out


def marked(mark: str) -> dict[int, str]:
    """Every live process whose environment holds ASYNCQL_TEST_MARK=`mark`: a run started with
    that variable and everything it started, wherever they were reparented."""
    found: dict[int, str] = {}
    needle = f"ASYNCQL_TEST_MARK={mark}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle in environ.split(b"\0") and alive(int(entry)):
            found[int(entry)] = cmdline(int(entry))
    return found


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


_STARTED: list[subprocess.Popen] = []
STOP_GRACE_SECONDS = 60.0  # a leftover run's clean stop (SIGTERM) before it is killed


def start_train(args: list[str], cwd: Path, env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """`asyncql train ARGS` as a child of the test, output captured. A run still going when its
    test ends (a failed assertion) is stopped by `stop_leftover_runs`, so it cannot load the tests after it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncql_cli", "train", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )
    _STARTED.append(proc)
    return proc


def stop_leftover_runs() -> list[int]:
    """SIGTERM every run `start_train` started that is still going (a clean stop), SIGKILL after
    STOP_GRACE_SECONDS; returns their pids."""
    leftovers = [proc for proc in _STARTED if proc.poll() is None]
    _STARTED.clear()
    for proc in leftovers:
        proc.terminate()
    for proc in leftovers:
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            for pid in descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    return [proc.pid for proc in leftovers]


JOIN_SECONDS = 120.0  # a guard only: on a loaded machine a child may need long to leave


def join_or_kill(procs: list[Any], timeout: float = JOIN_SECONDS) -> list[Any]:
    """Join worker processes of a race test (after its stop flag is set); any still alive after
    `timeout` is killed and reaped. Returns those that had to be killed."""
    killed = []
    for proc in procs:
        proc.join(timeout=timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
            killed.append(proc)
    return killed

"""The few facts asyncql reads about processes from /proc (Linux), in one place.

Imports nothing of asyncql.
"""

from __future__ import annotations

import os
from pathlib import Path


def pid_running(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by its parent) is dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: a signal-0 probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children(parent: int) -> dict[int, str]:
    """Live child processes of `parent`: pid -> command line (process title)."""
    found: dict[int, str] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return found
    for entry in entries:
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found[int(entry)] = cmdline(int(entry))
    return found

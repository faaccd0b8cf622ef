"""No process outlives `asyncql train`: not the actors and learner, not the forkserver they are
started from (started before Hydra composes the config, and killed at the end instead of
waiting for its interpreter to tear down), not when the config turns out to be bad.

Every process a run starts inherits ASYNCQL_TEST_MARK, so survivors are found wherever they
were reparented (a check of the finished run's descendants would find nothing either way).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from proc_utils import alive, cmdline, marked, roles, wait_for

pytestmark = pytest.mark.slow


def run_marked(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, str, dict[int, str]]:
    """Run `asyncql train ARGS`; every process it started that was seen alive while it ran
    (marked ones, and the named actors and learners among its descendants: setproctitle
    rewrites the memory /proc/<pid>/environ shows, so their mark cannot be read)."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "asyncql_cli", "train", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ASYNCQL_TEST_MARK": mark})
    seen: dict[int, str] = {}

    def note_children() -> bool:
        seen.update({pid: cmd for pid, cmd in marked(mark).items() if pid != proc.pid})
        seen.update({pid: f"asyncql:{role}" for role, pid in roles(proc.pid).items()})
        return proc.poll() is not None

    wait_for(note_children, timeout=120, interval=0.2)
    output, errors = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, output, errors), mark, seen


# multiprocessing's resource tracker exits by itself once the main process is gone (it reads EOF
# on the pipe the main process held), a few milliseconds later, more on a loaded machine: a
# process still there after this grace is one the run failed to end
EXIT_GRACE_SECONDS = 60.0  # a wait for the resource tracker to go, not a bound: it returns once it has


def survivors(seen: dict[int, str], mark: str) -> dict[int, str]:
    """Processes of the run still alive once the grace has passed: pid -> command line."""
    def left() -> dict[int, str]:
        return {**{pid: cmdline(pid) for pid in seen if alive(pid)}, **marked(mark)}

    wait_for(lambda: not left(), timeout=EXIT_GRACE_SECONDS, interval=0.05)
    return left()


def test_a_finished_run_leaves_no_process_behind(tmp_path: Path) -> None:
    result, mark, seen = run_marked(
        ["env=CartPole-v1", "train.total_env_steps=5000", "train.progress=none",
         f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert any("forkserver" in cmd for cmd in seen.values()), seen  # it ran, and was seen running
    assert {"asyncql:actor-0", "asyncql:actor-1", "asyncql:learner-0"} <= set(seen.values()), seen
    assert survivors(seen, mark) == {}, "processes outlived the run"


@pytest.mark.parametrize("bad", ["algo.gamma=1.5", "no_such_key=1", "env=NoSuchEnvFile"])
def test_a_bad_config_leaves_no_process_behind(tmp_path: Path, bad: str) -> None:
    result, mark, seen = run_marked([bad, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().startswith("asyncql: error:") and len(result.stderr.strip().splitlines()) == 1
    assert survivors(seen, mark) == {}, "the early forkserver outlived a run that never started"

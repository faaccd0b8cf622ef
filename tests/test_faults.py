"""Faults provoked from outside a real multi-process run: signals, killed children,
exceptions inside envs, NaN losses, a killed main process.

Every test asserts the exit code, what the run directory holds afterwards, and that no
asyncql process is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from proc_utils import alive, descendants, roles, start_train, wait_for

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).resolve().parent
FAST = ["parallelism.num_actors=2", "parallelism.envs_per_actor=4", "train.progress=plain",
        "eval.interval_seconds=2", "checkpoint.interval_seconds=2"]
ALL_ROLES = {"actor-0", "actor-1", "learner-0", "evaluator", "forkserver"}
# waits for events, never bounds on how fast they come: a loaded machine only makes them later
GUARD_SECONDS = 300.0


def _start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    run_dir = tmp_path / "run"
    proc = start_train([*FAST, *args, f"hydra.run.dir={run_dir}"], tmp_path,
                       env={"PYTHONPATH": str(TESTS_DIR), **(env or {})})
    return proc, run_dir


def _wait_training(proc: subprocess.Popen, run_dir: Path) -> dict[str, int]:
    """Wait until all roles run and the learner has written a checkpoint."""
    found: dict[str, int] = {}

    def ready() -> bool:
        found.update(roles(proc.pid))
        return ALL_ROLES <= set(found) and (run_dir / "checkpoints" / "last.pt").exists()

    assert wait_for(ready, timeout=GUARD_SECONDS), proc.communicate(timeout=30)[0][-3000:]
    return dict(found)


def _assert_all_gone(pids: list[int], timeout: float = GUARD_SECONDS) -> None:
    assert wait_for(lambda: not any(alive(pid) for pid in pids), timeout), [
        pid for pid in pids if alive(pid)
    ]
    # no shared-memory segment named after any of the run's processes is left behind
    leftovers = [name for name in os.listdir("/dev/shm") if any(f"_{pid}_" in name for pid in pids)]
    assert leftovers == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_with_exit_130_and_a_last_checkpoint(tmp_path: Path, signum: int) -> None:
    proc, run_dir = _start(tmp_path, "train.total_env_steps=10000000")
    pids = _wait_training(proc, run_dir)
    os.kill(proc.pid, signum)
    output, _ = proc.communicate(timeout=GUARD_SECONDS)
    assert proc.returncode == 130, output[-3000:]
    _assert_all_gone([*pids.values(), proc.pid])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "interrupted"
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["env_steps"] > 0 and last["updates"] > 0
    assert "Traceback" not in output


def test_second_ctrl_c_forces_a_fast_exit_without_orphans(tmp_path: Path) -> None:
    proc, run_dir = _start(tmp_path, "train.total_env_steps=10000000")
    pids = _wait_training(proc, run_dir)
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=GUARD_SECONDS)
    assert proc.returncode == 130
    _assert_all_gone(list(pids.values()))


def test_killed_actor_is_restarted_and_the_run_finishes(tmp_path: Path) -> None:
    proc, run_dir = _start(tmp_path, "train.total_env_steps=15000")
    pids = _wait_training(proc, run_dir)
    os.kill(pids["actor-1"], signal.SIGKILL)
    restarted = wait_for(lambda: roles(proc.pid).get("actor-1") not in (None, pids["actor-1"]), GUARD_SECONDS)
    output, _ = proc.communicate(timeout=180)
    assert restarted, output[-3000:]
    assert proc.returncode == 0, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["actor_restarts"] == 1 and summary["exit_reason"] == "budget"
    assert "actor-1 died" in (run_dir / "train.log").read_text()
    _assert_all_gone(list(pids.values()))


@pytest.mark.parametrize(("env_id", "extra", "crash_after", "logged"), [
    ("CrashOnce-v0", [], "1500", "boom: the env exploded"),  # an exception inside the env
    ("HangOnce-v0", ["parallelism.heartbeat_timeout_seconds=2"], "500", "(hung); killed"),  # a wedged env
])
def test_broken_env_actor_is_reported_and_restarted(tmp_path: Path, env_id: str, extra: list[str],
                                                    crash_after: str, logged: str) -> None:
    flag = tmp_path / "broke"
    proc, run_dir = _start(
        tmp_path, "env=gym", f"env.id=broken_envs:{env_id}", "train.total_env_steps=15000", *extra,
        env={"ASYNCQL_TEST_CRASH_FLAG": str(flag), "ASYNCQL_TEST_CRASH_AFTER": crash_after},
    )
    output, _ = proc.communicate(timeout=180)
    assert flag.exists()
    assert proc.returncode == 0, output[-3000:]
    assert logged in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["actor_restarts"] == 1


def test_actor_restart_budget_spent_stops_the_run_with_exit_1(tmp_path: Path) -> None:
    flag = tmp_path / "crashed"
    proc, run_dir = _start(
        tmp_path, "env=gym", "env.id=broken_envs:CrashOnce-v0", "train.total_env_steps=8000",
        "parallelism.max_actor_restarts=0",
        env={"ASYNCQL_TEST_CRASH_FLAG": str(flag), "ASYNCQL_TEST_CRASH_AFTER": "1500"},
    )
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "error" and "restart budget" in summary["error"]
    assert descendants(proc.pid) == {}


def test_killed_learner_stops_the_run_with_exit_1_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    proc, run_dir = _start(tmp_path, "train.total_env_steps=10000000")
    pids = _wait_training(proc, run_dir)
    os.kill(pids["learner-0"], signal.SIGKILL)
    output, _ = proc.communicate(timeout=GUARD_SECONDS)
    assert proc.returncode == 1, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "error" and "learner-0" in summary["error"]
    assert "learner-0 crashed" in (run_dir / "train.log").read_text()
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["updates"] > 0
    _assert_all_gone(list(pids.values()))


def test_nan_loss_stops_the_run_naming_the_update(tmp_path: Path) -> None:
    proc, run_dir = _start(
        tmp_path, "env=gym", "env.id=broken_envs:NaNReward-v0", "train.total_env_steps=10000000",
        "train.learning_starts=500", env={"ASYNCQL_TEST_NAN_AFTER": "800"},
    )
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "non-finite loss" in summary["error"] and "at update" in summary["error"]
    assert descendants(proc.pid) == {}


def test_children_exit_when_the_main_process_is_killed(tmp_path: Path) -> None:
    proc, run_dir = _start(tmp_path, "train.total_env_steps=10000000")
    pids = _wait_training(proc, run_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=GUARD_SECONDS)
    _assert_all_gone([*pids.values(), proc.pid])


def test_tight_update_debt_before_the_learner_can_start_does_not_deadlock(tmp_path: Path) -> None:
    # the actor must not wait for a learner that is itself waiting for the actor's data
    proc, run_dir = _start(tmp_path, "train.total_env_steps=1500", "train.learning_starts=200",
                           "actor.max_update_debt=20", "parallelism.num_actors=1")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] >= 1500 and summary["updates"] > 100


def test_a_killed_forkserver_leaves_the_run_going_and_a_new_one_serves_restarts(tmp_path: Path) -> None:
    """The children live on (they die with the main process, not with the forkserver they came
    from); a crashed actor is then restarted from a new forkserver, and the run ends well."""
    proc, run_dir = _start(tmp_path, "train.total_env_steps=15000")
    pids = _wait_training(proc, run_dir)
    assert "asyncql:forkserver" in descendants(proc.pid)[pids["forkserver"]]
    os.kill(pids["forkserver"], signal.SIGKILL)
    assert wait_for(lambda: not alive(pids["forkserver"]), GUARD_SECONDS)
    workers = {role: pid for role, pid in pids.items() if role != "forkserver"}
    last = run_dir / "checkpoints" / "last.pt"
    before = torch.load(last, weights_only=True)["updates"]
    assert wait_for(lambda: torch.load(last, weights_only=True)["updates"] > before, GUARD_SECONDS)
    assert all(alive(pid) for pid in workers.values()), {r: alive(p) for r, p in workers.items()}
    os.kill(workers["actor-1"], signal.SIGKILL)
    current: dict[str, int] = {}

    def restarted() -> bool:
        current.update(roles(proc.pid))
        return current.get("actor-1") not in (None, workers["actor-1"]) and \
            current.get("forkserver") not in (None, pids["forkserver"])

    assert wait_for(restarted, GUARD_SECONDS), proc.communicate(timeout=60)[0][-3000:]
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "budget" and summary["actor_restarts"] == 1, summary
    assert "learner-0 crashed" not in output
    _assert_all_gone([*workers.values(), current["actor-1"], current["forkserver"]])

"""Evaluation runs in its own process: the main loop goes on while a long evaluation runs.

A slow env (every step sleeps, every episode lasts 200 steps) makes one evaluation of 10
episodes take far longer than the test waits, whatever the machine's load (load only makes it
longer). Meanwhile the main process must keep writing its progress lines and must answer Ctrl-C
at once: the evaluation is abandoned, not finished first.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
from proc_utils import descendants, start_train, wait_for

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).resolve().parent
# one evaluation: 200 rows of 10 episodes stepped together, each step sleeping this long: 60 s at least
STEP_SECONDS = 0.03
PROGRESS_LINES_WANTED = 3  # progress lines the main loop writes while the first evaluation runs


def test_a_long_evaluation_blocks_neither_progress_lines_nor_ctrl_c(tmp_path: Path) -> None:
    proc = start_train(
        ["env=gym", "env.id=broken_envs:SlowSteps-v0", "parallelism.num_actors=1", "parallelism.envs_per_actor=2",
         "eval.interval_seconds=0.5", "eval.episodes=10", "train.progress=plain", "train.learning_starts=200",
         "buffer.capacity=2000", "actor.write_batch=16", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path, env={"PYTHONPATH": str(TESTS_DIR), "ASYNCQL_TEST_STEP_SECONDS": str(STEP_SECONDS)})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()

    def progress_during_evaluation() -> int:
        text = list(lines)
        started = next((i for i, line in enumerate(text) if "evaluator started" in line), None)
        if started is None:
            return 0
        return sum("env steps " in line for line in text[started:])

    assert wait_for(lambda: progress_during_evaluation() >= PROGRESS_LINES_WANTED, timeout=480), "".join(lines)[-3000:]
    assert not any("eval at" in line for line in lines), "the first evaluation finished: make the env slower"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, "".join(lines)[-3000:]
    reader.join(timeout=10)
    output = "".join(lines)
    assert "SIGINT received: stopping cleanly" in output
    assert "eval at" not in output  # the evaluation was abandoned, not waited for
    assert descendants(proc.pid) == {}
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()

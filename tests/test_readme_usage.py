"""Every command of the README's usage block runs as written, with a tiny budget added, so an
example there can never go stale: the block is read from README.md itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# appended to every `asyncql train` (the last value of a key wins); budgets in the command are replaced
TINY_TRAIN = ["train.learning_starts=200", "eval.interval_seconds=0.3", "train.progress=none",
              "checkpoint.interval_seconds=0.5"]
TINY_STEPS = 600
TINY_BENCH = ["--seconds", "0.2", "--actors", "1"]
USER_ENV = '''import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class MyEnv(CartPoleEnv):
    """A user's own env, registered when this module is imported."""


gym.register("MyEnv-v0", entry_point=MyEnv, max_episode_steps=200)
'''


def usage_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Using it\n+```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no usage block"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def test_the_usage_block_is_found() -> None:
    commands = usage_commands()
    assert sum(c.startswith("asyncql train") for c in commands) >= 8
    assert any(c.startswith("asyncql eval") for c in commands) and any("resume=" in c for c in commands)


def _run(command: str, cwd: Path, stamp_dir: Path | None) -> subprocess.CompletedProcess:
    words = command.split()
    if stamp_dir is not None:
        words = [w.replace("runs/CartPole-v1/<stamp>", str(stamp_dir)) for w in words]
    verb = words[1]
    if verb == "train":
        informational = any(w in ("--cfg", "--help") for w in words)
        budget = TINY_STEPS
        if any(w.startswith("resume=") for w in words):
            budget = 2 * TINY_STEPS  # continue past the first run's budget
        words = [f"train.total_env_steps={budget}" if w.startswith("train.total_env_steps=") else w for w in words]
        if not informational:
            words += [*TINY_TRAIN, f"train.total_env_steps={budget}"]
    elif verb == "bench":
        words += TINY_BENCH
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # where the user's my_pkg lives
    return subprocess.run([sys.executable, "-m", "asyncql_cli", *words[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def test_every_command_of_the_usage_block_runs(tmp_path: Path) -> None:
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "envs.py").write_text(USER_ENV)
    stamp_dir: Path | None = None
    ran = []
    for command in usage_commands():
        if not command.startswith("asyncql "):
            continue  # `tensorboard --logdir runs`: not ours
        result = _run(command, tmp_path, stamp_dir)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr, command
        ran.append(command)
        if stamp_dir is None and command.startswith("asyncql train env=CartPole-v1"):
            stamp_dir = max((tmp_path / "runs" / "CartPole-v1").iterdir())  # the run the eval examples use
    assert stamp_dir is not None and (stamp_dir / "eval.json").is_file()
    assert (stamp_dir / "videos" / "eval_best.mp4").is_file()
    assert any("resume=" in c for c in ran) and any(" -m " in c for c in ran)

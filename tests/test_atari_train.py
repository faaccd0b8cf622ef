"""The Atari pipeline end to end on CPU: Breakout through the CLI with two actor processes,
the frame replay, a Nature-CNN learner, evaluation on whole games, checkpoints and `asyncql eval`.

A few thousand agent steps (4 frames each) cannot teach Breakout anything; what is checked is
that every stage runs and hands the next what the contract says: raw whole-game returns in
TensorBoard, single-frame replay, uint8 stacks into the CNN, loadable checkpoints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from proc_utils import descendants, roles, start_train, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow

STEPS = 3000


@pytest.fixture(scope="module")
def breakout_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cwd = tmp_path_factory.mktemp("atari")
    run_dir = cwd / "run"
    proc = start_train(
        ["env=Breakout", f"train.total_env_steps={STEPS}", "train.learning_starts=600",
         "buffer.capacity=8000", "algo.batch_size=8", "algo.replay_ratio=0.02", "algo.target_update=10",
         "exploration.linear_steps=2000", "parallelism.num_actors=2", "parallelism.envs_per_actor=2",
         "actor.write_batch=16", "eval.interval_seconds=1000", "eval.episodes=1", "eval.confirm_episodes=0",
         "train.progress=plain", f"hydra.run.dir={run_dir}"],
        cwd,
    )
    seen: dict[str, int] = {}

    def all_roles_running() -> bool:
        seen.update(roles(proc.pid))
        return {"actor-0", "actor-1", "learner-0"} <= set(seen)

    concurrent = wait_for(all_roles_running, timeout=90)
    output, _ = proc.communicate(timeout=480)
    return {"proc": proc, "output": output, "run_dir": run_dir, "concurrent": concurrent, "cwd": cwd}


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_breakout_trains_end_to_end_and_leaves_no_process(breakout_run: dict) -> None:
    out = breakout_run["output"][-3000:]
    assert breakout_run["concurrent"], out
    assert breakout_run["proc"].returncode == 0, out
    assert descendants(breakout_run["proc"].pid) == {}
    summary = json.loads((breakout_run["run_dir"] / "summary.json").read_text())
    assert summary["env_id"] == "ALE/Breakout-v5"
    assert summary["env_steps"] >= STEPS and summary["updates"] > 0, summary
    log = (breakout_run["run_dir"] / "train.log").read_text()
    assert "frame replay: 8,000 rows in 4 streams, 7,096 bytes per row" in log


def test_logged_returns_are_whole_raw_games_and_the_learner_ran(breakout_run: dict) -> None:
    scalars = _scalars(breakout_run["run_dir"])
    games = scalars["train/episode_return"]
    lengths = [value for _, value in scalars["train/episode_length"]]
    assert games, "no whole game finished"
    # a game is 5 lives; a life is at least a few dozen agent steps even for a random policy
    assert min(lengths) >= 5 * 20, lengths
    assert all(value >= 0 and value == int(value) for _, value in games)
    losses = [value for _, value in scalars["learner/loss"]]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert scalars["eval/mean_return"], "the final evaluation is missing"


def test_checkpoint_holds_a_nature_cnn_and_eval_plays_whole_games(breakout_run: dict) -> None:
    run_dir = breakout_run["run_dir"]
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["network"]["name"] == "nature_cnn" and state["obs_shape"] == [4, 84, 84]
    assert state["q_net"]["conv.0.weight"].shape == (32, 4, 8, 8), "the first Nature convolution"
    result = subprocess.run(
        [sys.executable, "-m", "asyncql_cli", "eval", f"run_dir={run_dir}", "eval.episodes=2",
         "checkpoint=last"],
        cwd=breakout_run["cwd"], capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = json.loads((run_dir / "eval.json").read_text())
    summary = evaluation.get("summary", evaluation)
    assert summary["episodes"] == 2
    assert summary["mean_length"] >= 5 * 20, "evaluation plays whole games, not single lives"

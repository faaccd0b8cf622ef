"""Run lifecycle: stop and resume in the same run dir, and safe checkpoint loading."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from proc_utils import start_train, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asyncql_cli.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from asyncql_cli.config.schema import NetworkConfig
from asyncql_cli.errors import BadInput

FAST = ["parallelism.num_actors=2", "parallelism.envs_per_actor=4", "train.progress=plain",
        "eval.interval_seconds=2", "checkpoint.interval_seconds=2"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asyncql_cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=480)


@pytest.mark.slow
def test_interrupted_run_resumes_in_place_and_continues_its_curves(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # episodes capped at 200 steps: a policy that learned balances for whole episodes, and the
    # resumed stretch must still have episodes to show
    proc = start_train([*FAST, "train.total_env_steps=16000", "checkpoint.save_replay=true",
                        "env.max_episode_steps=200", f"hydra.run.dir={run_dir}"], tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    assert wait_for(lambda: last.exists() and (run_dir / "checkpoints" / "best.pt").exists(), 90)
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    stopped = torch.load(last, weights_only=True)
    assert 0 < stopped["env_steps"] < 16000

    # a stretch of 8000 more env steps, however far the first part got before the signal
    budget = stopped["env_steps"] + 8000
    resumed = _cli("train", f"resume={run_dir}", f"train.total_env_steps={budget}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generation"] == 1 and summary["exit_reason"] == "budget"
    assert budget <= summary["env_steps"] < budget + 2000  # counts from the original start, did not start over
    final = torch.load(last, weights_only=True)
    assert final["updates"] > stopped["updates"] and final["generation"] == 1
    log = (run_dir / "train.log").read_text()
    assert f"resuming at {stopped['env_steps']} env steps" in log
    assert "replay rows restored" in log and ", 0 replay rows restored" not in log

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("train/episode_return", "learner/loss", "perf/env_steps_per_sec"):
        steps = [event.step for event in events.Scalars(tag)]
        assert steps == sorted(steps), tag  # no overlapping or repeated stretches
        assert max(steps) > stopped["env_steps"] + 2000 and min(steps) < stopped["env_steps"], tag


def test_resume_of_a_missing_run_dir_is_one_clear_line(tmp_path: Path) -> None:
    result = _cli("train", f"resume={tmp_path / 'nope'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such run directory" in result.stderr


class _Exploit:
    def __reduce__(self):  # runs on unpickling: would create the marker file
        return (os.system, (f"touch {os.environ['ASYNCQL_MARKER']}",))


def test_hostile_checkpoint_is_refused_and_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ASYNCQL_MARKER", str(marker))
    hostile = tmp_path / "best.pt"
    with hostile.open("wb") as handle:
        torch.save({"format": "asyncql-checkpoint-v1", "q_net": _Exploit()}, handle)
    with pytest.raises(BadInput, match="refused"):
        load_checkpoint(hostile)
    assert not marker.exists()
    plain_pickle = tmp_path / "plain.pt"
    plain_pickle.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(BadInput):
        load_checkpoint(plain_pickle)
    assert not marker.exists()


def _checkpoint(**extra: Any) -> dict[str, Any]:
    """The least a checkpoint holds (an Acrobot MLP of one hidden layer, from before layer_norm)."""
    return {"env_id": "Acrobot-v1", "obs_shape": [6], "num_actions": 3,
            "network": {"hidden": [64], "dueling": False}, "q_net": {"w": torch.zeros(2)}, **extra}


def test_foreign_and_broken_checkpoints_are_named(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    save_checkpoint(path, _checkpoint())
    state = load_checkpoint(path)
    with pytest.raises(BadInput, match="env id 'Acrobot-v1'"):
        check_compatible(state, path, "CartPole-v1", (4,), 2, NetworkConfig(hidden=[64]))
    with pytest.raises(BadInput, match="network.hidden"):
        check_compatible(state, path, "Acrobot-v1", (6,), 3, NetworkConfig(hidden=[256]))
    # a checkpoint from before network.layer_norm existed is a plain network; a LayerNorm run refuses it
    check_compatible(state, path, "Acrobot-v1", (6,), 3, NetworkConfig(hidden=[64], layer_norm=False))
    with pytest.raises(BadInput, match="network.layer_norm False"):
        check_compatible(state, path, "Acrobot-v1", (6,), 3, NetworkConfig(hidden=[64], layer_norm=True))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(BadInput, match="not an asyncql checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "truncated.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(BadInput, match="not a readable"):
        load_checkpoint(tmp_path / "truncated.pt")
    with pytest.raises(BadInput, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _checkpoint(updates=1))

    class Boom:
        def __reduce__(self):
            raise KeyboardInterrupt  # the writer dies in the middle of serialising

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _checkpoint(updates=2, bad=Boom()))
    assert load_checkpoint(path)["updates"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


@pytest.mark.parametrize("confirm", [100, 0])
def test_stop_at_return_is_confirmed_on_fresh_episodes_before_it_counts(tmp_path: Path, confirm: int) -> None:
    """An evaluation reaching train.stop_at_return is re-run on eval.confirm_episodes fresh
    episodes; that mean decides the stop and is best.pt's score, and `asyncql eval` with the
    seeds stored in best.pt reproduces it. confirm_episodes=0 turns the confirmation off."""
    run_dir = tmp_path / "run"
    # an untrained greedy CartPole policy lasts about 9 steps: 3.0 is reached at the first eval
    result = _cli("train", "parallelism=serial", "train.stop_at_return=3.0", "train.learning_starts=100000",
                  "eval.interval_seconds=0.5", f"eval.confirm_episodes={confirm}", "train.progress=plain",
                  f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "solved"
    log = (run_dir / "train.log").read_text()
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    if confirm:
        assert "confirmation at" in log and f"over {confirm} episodes" in log
        # its own episodes: after the periodic ones, a range per env-step count
        assert best["eval_episodes"] == confirm
        assert best["eval_seed"] == 1_000_000_000 + 10 + best["env_steps"] * confirm
    else:
        assert "confirmation at" not in log
        assert best["eval_episodes"] == 10 and best["eval_seed"] == 1_000_000_000
    assert summary["best_eval_return"] == pytest.approx(best["eval_return"])
    assert summary["best_eval_confirmed"] is bool(confirm) and best["eval_confirmed"] is bool(confirm)
    replay = _cli("eval", f"run_dir={run_dir}", f"eval.episodes={best['eval_episodes']}",
                  f"eval.seed={best['eval_seed']}", cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert json.loads((run_dir / "eval.json").read_text())["mean_return"] == pytest.approx(best["eval_return"])


def test_a_run_stops_only_once_best_pt_clears_the_target_by_the_margin(tmp_path: Path) -> None:
    """eval.confirm_margin: the stop needs best.pt's confirmed mean minus k standard errors at
    the target. An untrained policy confirmed at ~9 with a margin of 1000 standard errors is
    above 3.0 but not by the margin: the run goes on to its budget."""
    run_dir = tmp_path / "run"
    margin, confirm = 1000.0, 100
    result = _cli("train", "parallelism=serial", "train.stop_at_return=3.0", "train.learning_starts=100000",
                  "train.total_env_steps=3000", "eval.interval_seconds=0.2", f"eval.confirm_episodes={confirm}",
                  f"eval.confirm_margin={margin}", "train.progress=plain", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["eval_return"] >= 3.0 and best["eval_episodes"] == confirm  # a confirmed score above 3 ...
    assert summary["exit_reason"] == "budget"  # ... that did not stop the run
    # the bound is the confirmation's mean minus k sample standard errors
    replay = _cli("eval", f"run_dir={run_dir}", f"eval.episodes={confirm}", f"eval.seed={best['eval_seed']}",
                  cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr[-2000:]
    stats = json.loads((run_dir / "eval.json").read_text())
    assert stats["std_return"] > 0
    want = stats["mean_return"] - margin * stats["std_return"] / (confirm - 1) ** 0.5
    assert best["eval_lower_bound"] == pytest.approx(want) and best["eval_lower_bound"] < 3.0

"""End to end: a real multi-process CartPole run through the CLI, then `asyncql eval`.

Checks that several actor processes and a learner run at once, that returns rose, that the
run directory holds everything the contract promises, that no process outlives the run,
and that `asyncql eval` reproduces the training-time evaluation of the best checkpoint.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from proc_utils import descendants, roles, start_train, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow

CONTRACT_TAGS = {
    "train/episode_return", "train/episode_return_all", "exploration/epsilon/slot0", "exploration/epsilon/slot11",
    "train/episode_length", "train/epsilon", "learner/loss",
    "learner/q_mean", "learner/grad_norm", "eval/mean_return", "perf/env_steps_per_sec",
    "perf/updates_per_sec", "replay/size", "actor/policy_lag",
}


# every process of a run names its role in ps: the forkserver the children come from, too
EXPECTED_ROLES = {"forkserver", "actor-0", "actor-1", "actor-2", "learner-0", "evaluator"}


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 3-actor CartPole run shared by the tests of this module."""
    cwd = tmp_path_factory.mktemp("e2e")
    run_dir = cwd / "run"
    proc = start_train(
        ["env=CartPole-v1", "parallelism.num_actors=3", "parallelism.envs_per_actor=4",
         "train.total_env_steps=20000", "eval.interval_seconds=3", "train.progress=plain",
         f"hydra.run.dir={run_dir}"],
        cwd,
    )
    seen: dict[str, int] = {}

    def all_roles_running() -> bool:
        seen.update(roles(proc.pid))
        return EXPECTED_ROLES <= set(seen)

    concurrent = wait_for(all_roles_running, timeout=60)
    output, _ = proc.communicate(timeout=480)
    return {"proc": proc, "output": output, "run_dir": run_dir, "roles": dict(seen),
            "concurrent": concurrent}


def test_three_actors_a_learner_and_the_evaluator_run_at_once_and_none_is_left(trained_run: dict) -> None:
    assert trained_run["concurrent"], trained_run["output"][-3000:]
    assert trained_run["proc"].returncode == 0, trained_run["output"][-3000:]
    assert set(trained_run["roles"]) == EXPECTED_ROLES, trained_run["roles"]
    pids = trained_run["roles"].values()
    assert len(set(pids)) == len(EXPECTED_ROLES)
    for pid in pids:
        assert wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists()
                        or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], timeout=5)
    assert descendants(trained_run["proc"].pid) == {}


def test_returns_rose_and_contract_tags_are_written(trained_run: dict) -> None:
    scalars = _scalars(trained_run["run_dir"])
    assert CONTRACT_TAGS <= set(scalars), CONTRACT_TAGS - set(scalars)
    returns = [value for _, value in scalars["train/episode_return"]]
    assert len(returns) >= 100
    early, late = statistics.fmean(returns[:50]), statistics.fmean(returns[-50:])
    assert late > 2 * early and late > 60, (early, late)
    steps = [step for step, _ in scalars["train/episode_return"]]
    # x axis: global env steps. The last episode ends within one full-length (500-step) episode
    # of each of the 12 envs before the 20k budget, far beyond the number of episodes
    assert steps == sorted(steps) and steps[-1] >= 20_000 - 12 * 500 and steps[-1] > 10 * len(steps)
    summary = json.loads((trained_run["run_dir"] / "summary.json").read_text())
    assert summary["exit_reason"] == "budget"
    assert summary["env_steps"] >= 20_000 and summary["updates"] > 1000
    assert summary["best_eval_return"] >= 150, summary


def test_run_directory_layout(trained_run: dict) -> None:
    run_dir = trained_run["run_dir"]
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "summary.json",
                 "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    log = (run_dir / "train.log").read_text()
    for role, pid in trained_run["roles"].items():
        assert f"{role} started (pid {pid}" in log
    assert re.search(r"learner-0 device: (cpu \(\d+ threads\)|cuda:\d+ \(.+\))\n", log), log  # resolved, not "auto"
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_eval_reproduces_training_time_best_score(trained_run: dict) -> None:
    run_dir = trained_run["run_dir"]
    import torch

    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    result = subprocess.run(
        [sys.executable, "-m", "asyncql_cli", "eval", f"run_dir={run_dir}", "checkpoint=best",
         f"eval.episodes={best['eval_episodes']}", f"eval.seed={best['eval_seed']}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["mean_return"] == pytest.approx(best["eval_return"])
    assert report["episodes"] == best["eval_episodes"]
    assert report["env_id"] == "CartPole-v1" and report["checkpoint"].endswith("best.pt")
    for key in ("std_return", "min_return", "max_return"):
        assert key in report

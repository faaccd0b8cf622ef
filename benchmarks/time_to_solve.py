"""Time to solve: asyncql against Stable-Baselines3 DQN with the rl-baselines3-zoo recipe.

    .venv/bin/pip install -e ".[bench]"          # stable-baselines3, matplotlib
    .venv/bin/python benchmarks/time_to_solve.py --env CartPole-v1 --seeds 0,1,2
    .venv/bin/python benchmarks/time_to_solve.py --env Acrobot-v1 --seeds 0,1,2 --only sb3

For every seed, both tools are run one after the other (asyncql seed 0, SB3 seed 0, asyncql
seed 1, ...) so that a change in machine load hits both alike. Each run is its own fresh
Python process, timed from launch to exit, so both pay their own interpreter, import and
setup costs:

- asyncql: the real CLI, `python -m asyncql_cli train env=... seed=...
  train.stop_at_return=<threshold> train.max_seconds=<cap>`, with its own defaults otherwise
  (a greedy 10-episode evaluation every `eval.interval_seconds`). The eval-return curve comes
  from the run's TensorBoard events (`eval/mean_return`, wall time relative to launch).
- SB3: this script re-run as `--sb3-worker`: `DQN` with the zoo hyperparameters of
  `hyperparams/dqn.yml` (ZOO_DQN below), default device, torch's default threading unless
  `--sb3-threads N` (asyncql uses one torch thread per process; on a busy machine torch's
  default of one thread per core can make SB3 many times slower), learning for the zoo's
  `n_timesteps`, stopped by an `EvalCallback` (10 greedy episodes every `--sb3-eval-freq`
  env steps) whose `callback_on_new_best` is `StopTrainingOnRewardThreshold(threshold)`,
  and by a wall-clock cap.

Both then get the same final test, outside the timed runs: asyncql's own greedy evaluator
(`asyncql_cli.evaluation.evaluate.evaluate`) for `--eval-episodes` episodes on seeds no run has seen
(episode k of seed s uses env seed 2_000_000_000 + 1000 * s + k), applied to the weights each
tool kept as best (asyncql `checkpoints/best.pt`, SB3 `best_model.zip`'s `q_net`).

A seed is *solved* when that final greedy mean is >= the threshold. Its wall-clock to solve
is the launch-to-exit time of the run that produced the solving weights; its env steps to
solve are the env steps at the evaluation that picked those weights. Medians and ranges are
over all seeds, an unsolved seed counting as infinitely slow.

Writes `<out-dir>/time_to_solve.md` (table), `time_to_solve.json` (every per-seed number,
load averages, versions) and `time_to_solve.png` (eval return against wall-clock).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent

# rl-baselines3-zoo, hyperparams/dqn.yml (https://github.com/DLR-RM/rl-baselines3-zoo), verbatim.
# The zoo gives Acrobot-v1 ("Tuned") and LunarLander the same values.
ZOO_ACROBOT_LUNARLANDER: dict[str, Any] = {
    "n_timesteps": 1e5,
    "policy": "MlpPolicy",
    "learning_rate": 6.3e-4,
    "batch_size": 128,
    "buffer_size": 50000,
    "learning_starts": 0,
    "gamma": 0.99,
    "target_update_interval": 250,
    "train_freq": 4,
    "gradient_steps": -1,
    "exploration_fraction": 0.12,
    "exploration_final_eps": 0.1,
    "policy_kwargs": {"net_arch": [256, 256]},
}
ZOO_DQN: dict[str, dict[str, Any]] = {
    "CartPole-v1": {  # "Almost Tuned"
        "n_timesteps": 5e4,
        "policy": "MlpPolicy",
        "learning_rate": 2.3e-3,
        "batch_size": 64,
        "buffer_size": 100000,
        "learning_starts": 1000,
        "gamma": 0.99,
        "target_update_interval": 10,
        "train_freq": 256,
        "gradient_steps": 128,
        "exploration_fraction": 0.16,
        "exploration_final_eps": 0.04,
        "policy_kwargs": {"net_arch": [256, 256]},
    },
    "Acrobot-v1": ZOO_ACROBOT_LUNARLANDER,
    "MountainCar-v0": {  # "Tuned"
        "n_timesteps": 1.2e5,
        "policy": "MlpPolicy",
        "learning_rate": 4e-3,
        "batch_size": 128,
        "buffer_size": 10000,
        "learning_starts": 1000,
        "gamma": 0.98,
        "target_update_interval": 600,
        "train_freq": 16,
        "gradient_steps": 8,
        "exploration_fraction": 0.2,
        "exploration_final_eps": 0.07,
        "policy_kwargs": {"net_arch": [256, 256]},
    },
    # the zoo's LunarLander entry (written for v2; same dynamics in v3) has Acrobot's values
    "LunarLander-v3": ZOO_ACROBOT_LUNARLANDER,
}

# The usual "solved" mean returns (gymnasium's reward_threshold for CartPole-v1).
SOLVED_RETURN: dict[str, float] = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "MountainCar-v0": -110.0,
                                   "LunarLander-v3": 200.0}

TRAIN_EVAL_EPISODES = 10          # per training-time evaluation, both tools (asyncql's default)
SB3_EVAL_SEED = 1_000_000_000     # SB3's EvalCallback env, as asyncql's eval.seed
FINAL_EVAL_SEED = 2_000_000_000   # final test: seed + 1000 * run seed + k, seen by no run
GRACE_SECONDS = 120.0             # beyond --max-seconds before a run is stopped from outside
TOOLS = ("asyncql", "sb3")
LABELS = {"asyncql": "asyncql", "sb3": "SB3 DQN"}
COLORS = {"asyncql": "tab:blue", "sb3": "tab:orange"}


@dataclass
class RunResult:
    """One tool on one seed: the timed run plus the final greedy test."""

    tool: str
    seed: int
    run_dir: str
    returncode: Optional[int] = None
    launch_to_exit_seconds: Optional[float] = None
    exit_reason: Optional[str] = None          # solved | budget | max_seconds | error | timeout
    stop_eval_seconds: Optional[float] = None  # launch to the first training eval >= threshold
    best_env_steps: Optional[int] = None       # env steps at the eval that picked the kept weights
    total_env_steps: Optional[int] = None
    best_train_eval: Optional[float] = None
    final_mean: Optional[float] = None
    final_std: Optional[float] = None
    final_min: Optional[float] = None
    solved: bool = False
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    curve: list[list[float]] = field(default_factory=list)  # [seconds since launch, env steps, mean return]
    error: Optional[str] = None
    external_interrupts: int = 0               # earlier attempts stopped by a signal this script did not send

    @property
    def interrupted_from_outside(self) -> bool:
        """asyncql's SIGINT/SIGTERM exit, or a worker killed by a signal, that was not our timeout."""
        return self.exit_reason == "interrupted" or (self.returncode is not None and self.returncode < 0
                                                     and self.exit_reason != "timeout")

    @property
    def seconds_to_solve(self) -> float:
        return self.launch_to_exit_seconds if self.solved and self.launch_to_exit_seconds else math.inf

    @property
    def steps_to_solve(self) -> float:
        return float(self.best_env_steps) if self.solved and self.best_env_steps is not None else math.inf


# -- running a child process ----------------------------------------------------------------
def _timed_process(cmd: list[str], log_file: Path, deadline: float) -> tuple[float, float, int, bool]:
    """Run cmd from the repo root; returns (launch epoch, launch-to-exit seconds, rc, timed out).
    The child finds the launch epoch in $ASYNCQL_BENCH_LAUNCH_EPOCH (the SB3 worker times its evals with it)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as log:
        launch_epoch = time.time()
        env = {**os.environ, "ASYNCQL_BENCH_LAUNCH_EPOCH": repr(launch_epoch)}
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        timed_out = False
        try:
            rc = proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGTERM)  # asyncql: clean shutdown; SB3 worker: just dies
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        elapsed = time.monotonic() - start
    return launch_epoch, elapsed, rc, timed_out


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# -- asyncql --------------------------------------------------------------------------------
def asyncql_command(env_id: str, seed: int, threshold: float, max_seconds: float, run_dir: Path,
                    stop_at: Optional[float] = None, overrides: tuple[str, ...] = ()) -> list[str]:
    """The CLI as a user types it; an env without its own conf/env file goes through env=gym.
    The run stops at `stop_at` (default: the threshold it is judged by); `overrides` follow the env."""
    env_args = [f"env={env_id}"] if (REPO / "conf" / "env" / f"{env_id}.yaml").is_file() \
        else ["env=gym", f"env.id={env_id}", f"env.solved_return={threshold}"]
    return [sys.executable, "-m", "asyncql_cli", "train", *env_args, *overrides, f"seed={seed}",
            f"train.stop_at_return={threshold if stop_at is None else stop_at}", f"train.max_seconds={max_seconds}",
            "train.progress=plain", f"hydra.run.dir={run_dir}"]


def asyncql_curve(run_dir: Path, launch_epoch: float) -> list[list[float]]:
    """eval/mean_return from the run's TensorBoard events: [seconds since launch, env steps, value]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if "eval/mean_return" not in events.Tags().get("scalars", []):
        return []
    return [[e.wall_time - launch_epoch, float(e.step), float(e.value)]
            for e in events.Scalars("eval/mean_return")]


def _timed_run(tool: str, seed: int, run_dir: Path, cmd: list[str],
               max_seconds: float) -> tuple[RunResult, float, bool]:
    """Launch one tool's run as its own process; the result holds the timing and load."""
    result = RunResult(tool, seed, str(run_dir), load_before=list(os.getloadavg()))
    launch, elapsed, rc, timed_out = _timed_process(cmd, run_dir.parent / f"seed{seed}.log",
                                                    max_seconds + GRACE_SECONDS)
    result.load_after = list(os.getloadavg())
    result.returncode, result.launch_to_exit_seconds = rc, elapsed
    return result, launch, timed_out


def run_asyncql(env_id: str, seed: int, threshold: float, max_seconds: float, out_dir: Path,
                stop_at: Optional[float] = None, overrides: tuple[str, ...] = ()) -> RunResult:
    run_dir = _fresh_dir(out_dir / "runs" / "asyncql" / f"seed{seed}")
    cmd = asyncql_command(env_id, seed, threshold, max_seconds, run_dir, stop_at, overrides)
    result, launch, timed_out = _timed_run("asyncql", seed, run_dir, cmd, max_seconds)
    rc = result.returncode
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        result.exit_reason = summary.get("exit_reason")
        result.best_env_steps = summary.get("best_eval_env_steps")
        result.total_env_steps = summary.get("env_steps")
        result.best_train_eval = summary.get("best_eval_return")
        result.error = summary.get("error")
    else:
        result.error = f"no summary.json (exit code {rc}); see {run_dir.parent / f'seed{seed}.log'}"
    if timed_out:
        result.exit_reason = "timeout"
    result.curve = asyncql_curve(run_dir, launch) if run_dir.is_dir() else []
    result.stop_eval_seconds = _first_at_or_above(result.curve, threshold)
    return result


def asyncql_best_net(run_dir: Path) -> Any:
    from asyncql_cli.algo.networks import build_network
    from asyncql_cli.checkpoint import load_checkpoint, network_of

    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    net = build_network(network_of(state), state["obs_shape"], state["num_actions"])
    net.load_state_dict(state["q_net"])
    return net.eval()


# -- SB3 ------------------------------------------------------------------------------------
def sb3_command(env_id: str, seed: int, threshold: float, max_seconds: float, run_dir: Path,
                eval_freq: int, threads: Optional[int]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--sb3-worker", "--env", env_id,
            "--seeds", str(seed), "--threshold", str(threshold), "--max-seconds", str(max_seconds),
            "--worker-dir", str(run_dir), "--sb3-eval-freq", str(eval_freq),
            *(["--sb3-threads", str(threads)] if threads else [])]


def run_sb3(env_id: str, seed: int, threshold: float, max_seconds: float, out_dir: Path, eval_freq: int,
            threads: Optional[int]) -> RunResult:
    run_dir = _fresh_dir(out_dir / "runs" / "sb3" / f"seed{seed}")
    run_dir.mkdir()
    cmd = sb3_command(env_id, seed, threshold, max_seconds, run_dir, eval_freq, threads)
    result, launch, timed_out = _timed_run("sb3", seed, run_dir, cmd, max_seconds)
    rc = result.returncode
    report_file = run_dir / "worker.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        result.exit_reason = report["exit_reason"]
        result.total_env_steps = report["total_env_steps"]
        result.best_env_steps = report["best_env_steps"]
        result.best_train_eval = report["best_mean_reward"]
        shift = report["launch_epoch"] - launch  # 0 unless the worker ran without the parent's epoch
        result.curve = [[t + shift, s, r] for t, s, r in report["curve"]]
    else:
        result.error = f"no worker.json (exit code {rc}); see {run_dir.parent / f'seed{seed}.log'}"
    if timed_out:
        result.exit_reason = "timeout"
    result.stop_eval_seconds = _first_at_or_above(result.curve, threshold)
    return result


def sb3_worker(env_id: str, seed: int, threshold: float, max_seconds: float, run_dir: Path,
               eval_freq: int, threads: Optional[int]) -> None:
    """The timed SB3 run (its own process): zoo DQN until the eval callback or the cap stops it."""
    launch_epoch = float(os.environ.get("ASYNCQL_BENCH_LAUNCH_EPOCH", time.time()))
    import torch

    if threads:
        torch.set_num_threads(threads)
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import (
        BaseCallback,
        CallbackList,
        EvalCallback,
        StopTrainingOnRewardThreshold,
    )
    from stable_baselines3.common.env_util import make_vec_env

    class Recorder(BaseCallback):
        """After every evaluation: (seconds since launch, env steps, mean reward)."""

        def __init__(self) -> None:
            super().__init__()
            self.curve: list[list[float]] = []

        def _on_step(self) -> bool:
            self.record(self.parent)
            return True

        def record(self, evaluator: Any) -> None:
            self.curve.append([time.time() - launch_epoch, float(evaluator.num_timesteps),
                               float(evaluator.last_mean_reward)])

    class WallClockCap(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.hit = False

        def _on_step(self) -> bool:
            self.hit = time.time() - launch_epoch >= max_seconds
            return not self.hit

    hyper = dict(ZOO_DQN[env_id])
    total, policy = int(hyper.pop("n_timesteps")), hyper.pop("policy")
    env = make_vec_env(env_id, n_envs=1, seed=seed)
    eval_env = make_vec_env(env_id, n_envs=1, seed=SB3_EVAL_SEED + seed)
    recorder, cap = Recorder(), WallClockCap()
    best_steps: list[int] = []

    class NewBest(StopTrainingOnRewardThreshold):
        def _on_step(self) -> bool:
            best_steps.append(self.num_timesteps)
            keep_going = super()._on_step()
            if not keep_going:  # EvalCallback skips callback_after_eval once training is to stop
                recorder.record(self.parent)
            return keep_going

    stopper = NewBest(reward_threshold=threshold, verbose=0)
    evaluator = EvalCallback(eval_env, callback_on_new_best=stopper, callback_after_eval=recorder,
                             n_eval_episodes=TRAIN_EVAL_EPISODES, eval_freq=eval_freq,
                             best_model_save_path=str(run_dir), deterministic=True, verbose=0, warn=False)
    model = DQN(policy, env, seed=seed, verbose=0, **hyper)
    model.learn(total_timesteps=total, callback=CallbackList([evaluator, cap]))
    solved = evaluator.best_mean_reward >= threshold
    reason = "solved" if solved else "max_seconds" if cap.hit else "budget"
    report = {"launch_epoch": launch_epoch, "exit_reason": reason, "total_env_steps": int(model.num_timesteps),
              "best_env_steps": best_steps[-1] if best_steps else None,
              "best_mean_reward": float(evaluator.best_mean_reward) if best_steps else None,
              "curve": recorder.curve, "hyperparameters": ZOO_DQN[env_id], "device": str(model.device),
              "torch_threads": torch.get_num_threads()}
    (run_dir / "worker.json").write_text(json.dumps(report, indent=2) + "\n")


def sb3_best_net(run_dir: Path) -> Any:
    from stable_baselines3 import DQN

    model = DQN.load(str(run_dir / "best_model.zip"), device="cpu")
    return model.q_net.eval()


# -- final test -----------------------------------------------------------------------------
def final_test(result: RunResult, env_id: str, threshold: float, episodes: int) -> None:
    """The same greedy evaluator and fresh seeds for both tools, on the weights each kept."""
    from asyncql_cli.config.schema import EnvConfig
    from asyncql_cli.evaluation.evaluate import evaluate

    loader = asyncql_best_net if result.tool == "asyncql" else sb3_best_net
    try:
        net = loader(Path(result.run_dir))
    except Exception as exc:  # no weights kept (crashed before the first eval)
        result.error = result.error or f"no best weights: {type(exc).__name__}: {exc}"
        return
    outcome = evaluate(net, EnvConfig(id=env_id), episodes, FINAL_EVAL_SEED + 1000 * result.seed)
    summary = outcome.summary()
    result.final_mean, result.final_std = summary["mean_return"], summary["std_return"]
    result.final_min = summary["min_return"]
    result.solved = result.final_mean >= threshold


def _first_at_or_above(curve: list[list[float]], threshold: float) -> Optional[float]:
    return next((t for t, _, r in curve if r >= threshold), None)


# -- report ---------------------------------------------------------------------------------
def _fmt(value: float, digits: int = 0) -> str:
    return "∞" if math.isinf(value) else f"{value:,.{digits}f}"


def _median_range(values: list[float], digits: int = 0) -> str:
    return f"{_fmt(statistics.median(values), digits)} [{_fmt(min(values), digits)}–{_fmt(max(values), digits)}]"


def tool_row(tool: str, results: list[RunResult], speedup: str) -> str:
    runs = [r for r in results if r.tool == tool]
    solved = sum(r.solved for r in runs)
    finals = [r.final_mean for r in runs if r.final_mean is not None]
    final = f"{statistics.median(finals):.1f}" if finals else "—"
    return (f"| {LABELS[tool]} | {solved}/{len(runs)} | {_median_range([r.seconds_to_solve for r in runs], 1)} | "
            f"{_median_range([r.steps_to_solve for r in runs])} | {final} | {speedup} |")


def median_seconds(results: list[RunResult], tool: str) -> float:
    return statistics.median([r.seconds_to_solve for r in results if r.tool == tool])


def speedups(results: list[RunResult], tools: list[str]) -> dict[str, str]:
    if "sb3" not in tools:
        return dict.fromkeys(tools, "—")
    base = median_seconds(results, "sb3")
    # SB3's median is at least the median launch-to-exit time of its runs (an unsolved run ran to its cap)
    base_floor = statistics.median([r.launch_to_exit_seconds or 0.0 for r in results if r.tool == "sb3"])
    out = {}
    for tool in tools:
        mine = median_seconds(results, tool)
        if math.isinf(mine):
            out[tool] = "—"
        elif math.isinf(base):
            out[tool] = f"> {base_floor / mine:.1f}x (SB3 median unsolved)"
        else:
            out[tool] = f"{base / mine:.2f}x"
    return out


def markdown(results: list[RunResult], meta: dict[str, Any], tools: list[str]) -> str:
    speed = speedups(results, tools)
    load = meta["load_average"]
    lines = [
        f"### {meta['env']}: time to solve (threshold {meta['threshold']:g}, seeds {meta['seeds']})",
        "",
        "| tool | seeds solved | wall-clock to solve, s: median [min–max] | env steps to solve: median [min–max] "
        f"| {meta['eval_episodes']}-episode greedy return (median) | speedup (SB3 median / median) |",
        "|---|---|---|---|---|---|",
        *[tool_row(tool, results, speed[tool]) for tool in tools],
        "",
        f"Solved: the mean return of {meta['eval_episodes']} greedy episodes on fresh seeds "
        f"({FINAL_EVAL_SEED:_} + 1000·seed + k, asyncql's evaluator for both) is >= {meta['threshold']:g}. "
        "Wall-clock to solve: seconds from launching the training process (a fresh Python interpreter, "
        "imports included) to its exit, for a run whose kept weights pass that test; both tools evaluate "
        f"{TRAIN_EVAL_EPISODES} greedy episodes while training (asyncql every {meta['asyncql_eval_interval']}, "
        f"SB3 every {meta['sb3_eval_freq']} env steps); SB3 stops on the first such evaluation >= the "
        f"threshold, asyncql once such an evaluation"
        + (f" reaches {meta['asyncql_stop_at_return']:g} (`train.stop_at_return`) and"
           if meta.get("asyncql_stop_at_return") is not None else "")
        + f" is confirmed on {meta.get('asyncql_confirm_episodes', 100)} further episodes "
        f"(`eval.confirm_episodes`)"
        + (f" with a mean {meta['asyncql_confirm_margin']:g} standard errors above it (`eval.confirm_margin`)"
           if meta.get("asyncql_confirm_margin") else "")
        + f", or at {meta['max_seconds']:g} s. "
        "Env steps to solve: env steps at the evaluation that picked the kept "
        "weights. Medians and ranges over all seeds; an unsolved seed counts as ∞. "
        + (f"SB3: rl-baselines3-zoo DQN hyperparameters, {meta['sb3_threads_note']}; "
           if "sb3" in tools else "SB3 was not run (`--only asyncql`); ")
        + "asyncql: its defaults for the env (one torch thread per process). "
        f"Machine: {meta['cpus']} CPUs ({meta['machine']}), shared; load average (1/5/15 min) "
        f"{_load(load['start'])} at the start, {_load(load['end'])} at the end; total {meta['total_seconds']:.0f} s."
        + _interrupt_note(results),
    ]
    return "\n".join(lines) + "\n"


def _interrupt_note(results: list[RunResult]) -> str:
    hit = [f"{LABELS[r.tool]} seed {r.seed}" for r in results if r.external_interrupts]
    return f" Stopped by a signal from outside and run again: {', '.join(hit)}." if hit else ""


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def plot(results: list[RunResult], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osd^v<>p*h"
    for r in results:
        if not r.curve:
            continue
        seconds = [p[0] for p in r.curve]
        returns = [p[2] for p in r.curve]
        ax.plot(seconds, returns, color=COLORS[r.tool], marker=markers[r.seed % len(markers)], markersize=3,
                linewidth=1.2, alpha=0.85, label=f"{LABELS[r.tool]} seed {r.seed}")
        if r.launch_to_exit_seconds:
            ax.axvline(r.launch_to_exit_seconds, color=COLORS[r.tool], linewidth=0.6, linestyle=":", alpha=0.6)
    ax.axhline(meta["threshold"], color="black", linestyle="--", linewidth=1, label=f"threshold {meta['threshold']:g}")
    ax.set_xlim(left=0)
    ax.set_xlabel("wall-clock seconds since launch (dotted: process exit)")
    ax.set_ylabel(f"greedy eval mean return ({TRAIN_EVAL_EPISODES} episodes)")
    ax.set_title(f"{meta['env']}: asyncql vs SB3 DQN (rl-zoo hyperparameters)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1", choices=sorted(ZOO_DQN))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--threshold", type=float, default=None, help="solved mean return (default: the env's)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="wall-clock cap of each training run")
    p.add_argument("--stop-at-return", type=float, default=None,
                   help="asyncql's train.stop_at_return (default: the threshold); above it, a run keeps "
                        "learning past policies that pass only just")
    p.add_argument("--eval-episodes", type=int, default=100, help="episodes of the final greedy test")
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results/<env>")
    p.add_argument("--only", choices=["asyncql", "sb3", "both"], default="both")
    p.add_argument("--asyncql-override", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for asyncql's runs, e.g. buffer=prioritized (repeatable)")
    p.add_argument("--sb3-eval-freq", type=int, default=2000, help="env steps between SB3's evaluations")
    p.add_argument("--sb3-threads", type=int, default=None,
                   help="torch threads of the SB3 process (default: torch's default, one per core); "
                        "asyncql uses 1 per process")
    p.add_argument("--from-json", type=Path, default=None,
                   help="rewrite the table and plot from a time_to_solve.json, running nothing")
    p.add_argument("--sb3-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.threshold = SOLVED_RETURN[args.env] if args.threshold is None else args.threshold
    args.out_dir = args.out_dir or REPO / "benchmarks" / "results" / args.env
    return args


def asyncql_eval_setting(results: list[RunResult], key: str) -> Any:
    """eval.<key> as a run composed it (else conf/config.yaml's)."""
    import yaml

    composed = [Path(r.run_dir) / ".hydra" / "config.yaml" for r in results if r.tool == "asyncql"]
    source = next((f for f in composed if f.is_file()), REPO / "conf" / "config.yaml")
    return yaml.safe_load(source.read_text())["eval"].get(key)


def run_one(args: argparse.Namespace, tool: str, seed: int) -> RunResult:
    """One timed run; a run stopped by a signal from outside (a shared machine) is run again, once."""
    for attempt in range(2):
        if tool == "asyncql":
            r = run_asyncql(args.env, seed, args.threshold, args.max_seconds, args.out_dir, args.stop_at_return,
                            tuple(args.asyncql_override))
        else:
            r = run_sb3(args.env, seed, args.threshold, args.max_seconds, args.out_dir, args.sb3_eval_freq,
                        args.sb3_threads)
        r.external_interrupts = attempt
        if not r.interrupted_from_outside:
            break
        print(f"{LABELS[tool]:8s} seed {seed}: interrupted by a signal from outside after "
              f"{r.launch_to_exit_seconds:.1f} s" + ("; running it again" if attempt == 0 else ""), flush=True)
    return r


def run_all(args: argparse.Namespace, tools: list[str]) -> list[RunResult]:
    results = []
    for seed in args.seed_list:
        for tool in tools:
            r = run_one(args, tool, seed)
            final_test(r, args.env, args.threshold, args.eval_episodes)
            print(f"{LABELS[tool]:8s} seed {seed}: {r.launch_to_exit_seconds:6.1f} s launch-to-exit, "
                  f"exit {r.exit_reason}, best eval at {r.best_env_steps} env steps, "
                  f"final {args.eval_episodes}-episode mean {r.final_mean}, solved {r.solved}"
                  + (f", error: {r.error}" if r.error else ""), flush=True)
            results.append(r)
    return results


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        done = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": git("status", "--porcelain", "--untracked-files=no")}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.sb3_worker:
        sb3_worker(args.env, args.seed_list[0], args.threshold, args.max_seconds, args.worker_dir,
                   args.sb3_eval_freq, args.sb3_threads)
        return 0
    if args.from_json:
        return rewrite(args.from_json)
    tools = list(TOOLS) if args.only == "both" else [args.only]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    load_start, start = list(os.getloadavg()), time.monotonic()
    results = run_all(args, tools)
    meta = {"env": args.env, "threshold": args.threshold, "seeds": args.seeds, "max_seconds": args.max_seconds,
            "asyncql_stop_at_return": args.stop_at_return,
            "eval_episodes": args.eval_episodes, "sb3_eval_freq": args.sb3_eval_freq,
            "asyncql_eval_interval": f"{asyncql_eval_setting(results, 'interval_seconds'):g} s",
            "asyncql_confirm_episodes": asyncql_eval_setting(results, "confirm_episodes"),
            "asyncql_confirm_margin": asyncql_eval_setting(results, "confirm_margin"),
            "total_seconds": time.monotonic() - start,
            "load_average": {"start": load_start, "end": list(os.getloadavg())},
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "python": platform.python_version(), "versions": versions(), "git": git_state(),
            "zoo_hyperparameters": ZOO_DQN[args.env], "sb3_torch_threads": sb3_threads(results)}
    meta["sb3_threads_note"] = (f"{meta['sb3_torch_threads']} torch thread(s)"
                                + (" (set by --sb3-threads)" if args.sb3_threads else " (torch's default)"))
    write_outputs(args.out_dir, results, meta, tools)
    return 0


def rewrite(json_file: Path) -> int:
    """Table and plot again from stored numbers (after a change to the report code)."""
    payload = json.loads(json_file.read_text())
    derived = {"seconds_to_solve", "steps_to_solve"}
    results = [RunResult(**{k: v for k, v in run.items() if k not in derived}) for run in payload["runs"]]
    tools = [t for t in TOOLS if any(r.tool == t for r in results)]
    write_outputs(json_file.parent, results, payload["meta"], tools)
    return 0


def sb3_threads(results: list[RunResult]) -> Optional[int]:
    for r in results:
        report = Path(r.run_dir) / "worker.json"
        if r.tool == "sb3" and report.is_file():
            return json.loads(report.read_text()).get("torch_threads")
    return None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("asyncql", "torch", "gymnasium", "stable-baselines3"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_outputs(out_dir: Path, results: list[RunResult], meta: dict[str, Any], tools: list[str]) -> None:
    table = markdown(results, meta, tools)
    (out_dir / "time_to_solve.md").write_text(table)
    payload = {"meta": meta, "runs": [{**asdict(r), "seconds_to_solve": _finite(r.seconds_to_solve),
                                       "steps_to_solve": _finite(r.steps_to_solve)} for r in results]}
    (out_dir / "time_to_solve.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, meta, out_dir / "time_to_solve.png")
    print()
    print(table)
    print(f"wrote {out_dir / 'time_to_solve.md'}, .json, .png")


def _finite(value: float) -> Optional[float]:
    return None if math.isinf(value) else value


if __name__ == "__main__":
    sys.exit(main())

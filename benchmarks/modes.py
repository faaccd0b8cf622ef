"""Compare the asynchronous Q-learning modes on the same envs and seeds (not a test).

    .venv/bin/python benchmarks/modes.py --envs CartPole-v1,Acrobot-v1 --seeds 0,1,2 --max-seconds 90

Each run is the real CLI with `train.stop_at_return=<env.solved_return>`; wall-clock is from
launching the process to its exit, env steps to solve from summary.json, and the quality is
a fresh 100-episode greedy evaluation of best.pt (`asyncql eval`, seeds unseen in training).
Writes `<out>/modes.md` (table), `<out>/modes.json` and, with matplotlib (the `bench` extra),
`<out>/modes.png` (greedy eval return against wall-clock).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES: dict[str, list[str]] = {
    "replay (Ape-X style)": [],
    "independent learners K=2": ["parallelism.num_learners=2"],
    "Hogwild learners K=2": ["parallelism.num_learners=2", "parallelism.learner_sharing=shared"],
    "actor-learners (Mnih 2016)": ["algo.mode=actor_learner", "buffer=none", "exploration.schedule=mnih2016",
                                   "parallelism.envs_per_actor=1", "algo.lr=1e-3"],
}
SOLVED = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "MountainCar-v0": -110.0, "LunarLander-v3": 200.0}
EVAL_SEED = 2_000_000_000


def run_one(env: str, mode: str, seed: int, max_seconds: float, out: Path) -> dict:
    run_dir = out / "runs" / env / mode.split()[0] / f"seed{seed}"
    command = [sys.executable, "-m", "asyncql_cli", "train", f"env={env}", f"seed={seed}",
               f"train.stop_at_return={SOLVED[env]}", f"train.max_seconds={max_seconds}",
               "train.total_env_steps=1000000000",  # every mode stops on solving or on the time cap
               "train.progress=none", "eval.interval_seconds=2", f"hydra.run.dir={run_dir}", *MODES[mode]]
    launched = time.time()
    code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.time() - launched
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    evaluated = subprocess.run([sys.executable, "-m", "asyncql_cli", "eval", f"run_dir={run_dir}",
                                "eval.episodes=100", f"eval.seed={EVAL_SEED + 1000 * seed}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    quality = json.loads((run_dir / "eval.json").read_text())["mean_return"] if evaluated == 0 else None
    return {"env": env, "mode": mode, "seed": seed, "exit_code": code, "wall_seconds": wall,
            "exit_reason": summary.get("exit_reason"), "solved_env_steps": summary.get("solved_env_steps"),
            "eval100": quality, "solved": quality is not None and quality >= SOLVED[env],
            "curve": _curve(run_dir, launched)}


def _curve(run_dir: Path, launched: float) -> list[tuple[float, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if "eval/mean_return" not in events.Tags()["scalars"]:
        return []
    return [(e.wall_time - launched, e.value) for e in events.Scalars("eval/mean_return")]


def _median_range(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):,.1f} [{min(values):,.1f}–{max(values):,.1f}]"


def table(rows: list[dict], seeds: list[int]) -> str:
    lines = ["| env | mode | seeds solved | wall-clock to exit, s (solved runs): median [range] "
             "| env steps to solve: median [range] | 100-episode greedy return: median |",
             "|---|---|---|---|---|---|"]
    for env in dict.fromkeys(r["env"] for r in rows):
        for mode in MODES:
            runs = [r for r in rows if r["env"] == env and r["mode"] == mode]
            solved = [r for r in runs if r["solved"]]
            steps = [float(r["solved_env_steps"]) for r in solved if r["solved_env_steps"] is not None]
            quality = [r["eval100"] for r in runs if r["eval100"] is not None]
            median_quality = f"{statistics.median(quality):,.1f}" if quality else "-"
            lines.append(f"| {env} | {mode} | {len(solved)}/{len(runs)} | "
                         f"{_median_range([r['wall_seconds'] for r in solved])} | {_median_range(steps)} | "
                         f"{median_quality} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    envs = list(dict.fromkeys(r["env"] for r in rows))
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    colors = dict(zip(MODES, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for ax, env in zip(axes[0], envs):
        for row in (r for r in rows if r["env"] == env and r["curve"]):
            xs, ys = zip(*row["curve"])
            ax.plot(xs, ys, color=colors[row["mode"]], label=f"{row['mode']} (seed {row['seed']})", alpha=0.8)
        ax.axhline(SOLVED[env], color="grey", linestyle="--", linewidth=1)
        ax.set(title=env, xlabel="wall-clock since launch (s)", ylabel="greedy eval return")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="CartPole-v1,Acrobot-v1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--max-seconds", type=float, default=150.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/modes"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    rows = []
    for env in args.envs.split(","):
        for mode in MODES:
            for seed in seeds:
                rows.append(run_one(env, mode, seed, args.max_seconds, args.out))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "curve"}), flush=True)
    text = (f"{table(rows, seeds)}\n\nMachine: {os.cpu_count()} CPUs; load average {load_before[0]:.2f} at the "
            f"start, {os.getloadavg()[0]:.2f} at the end. Each run stops once a 10-episode greedy evaluation "
            f">= the solved return is confirmed on further episodes (eval.confirm_episodes: the env's, e.g. CartPole "
            f"200, else 100) with a mean eval.confirm_margin (2) standard errors above it, or after "
            f"{args.max_seconds:.0f} s; 'solved' is judged by a fresh 100-episode greedy evaluation of best.pt "
            f"(seeds no run has seen).\n")
    (args.out / "modes.md").write_text(text)
    (args.out / "modes.json").write_text(json.dumps(rows, indent=1) + "\n")
    plotted = plot(rows, args.out / "modes.png")
    print(text + ("" if plotted else "(matplotlib not installed: no plot)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

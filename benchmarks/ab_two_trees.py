"""A/B of two source trees of asyncql: launch-to-exit time to a confirmed CartPole 475, seed by seed.

    git worktree add --detach /tmp/old <commit>; git worktree add --detach /tmp/new <commit>
    .venv/bin/python benchmarks/ab_two_trees.py --old /tmp/old --new /tmp/new --seeds 0,1,2,3,4,5,6,7,8,9 \\
        --out runs/ab [--json benchmarks/results/ab/x.json]

Each run is `asyncql train env=CartPole-v1 seed=<s> train.stop_at_return=475 train.max_seconds=120`
from the tree's own code (PYTHONPATH) and conf/, as a fresh process timed from launch to exit,
with this interpreter (its installed dependencies). The trees alternate A B, B A, ... so a change in
the machine's load hits both. Prints each tree's seeds solved and the median [range] wall-clock.
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


def entry_module(tree: Path) -> str:
    """`python -m asyncql_cli` since the restructuring; `asyncql_cli.cli` before it."""
    return "asyncql_cli" if (tree / "asyncql_cli" / "__main__.py").is_file() else "asyncql_cli.cli"


def one_run(tree: Path, seed: int, run_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", entry_module(tree), "train", "env=CartPole-v1", f"seed={seed}",
           "train.stop_at_return=475", "train.max_seconds=120", "train.progress=plain",
           f"hydra.run.dir={run_dir}", *extra]
    load = os.getloadavg()[0]
    start = time.monotonic()
    rc = subprocess.run(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.monotonic() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "rc": rc, "wall": wall, "exit": summary["exit_reason"], "env_steps": summary["env_steps"],
            "best": summary["best_eval_return"], "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--out", type=Path, required=True, help="run directories go here")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("extra", nargs="*", help="more overrides for both trees")
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    results = []
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        for name in (("old", "new") if i % 2 == 0 else ("new", "old")):
            row = {"tree": name, **one_run(trees[name], seed, args.out / f"{name}_seed{seed}", args.extra)}
            results.append(row)
            print(row, flush=True)
    for name in trees:
        walls = [r["wall"] for r in results if r["tree"] == name]
        solved = sum(r["exit"] == "solved" for r in results if r["tree"] == name)
        print(f"{name}: solved {solved}/{len(walls)}, median {statistics.median(walls):.2f} s "
              f"[{min(walls):.2f}-{max(walls):.2f}]")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

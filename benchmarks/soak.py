"""Soak benchmark (not a test): a long CartPole run, sampling every process's memory and
open file descriptors once a minute, to show they stay flat.

    .venv/bin/python benchmarks/soak.py --minutes 20 --out benchmarks/results/soak.json

Prints a markdown table (minute, processes, total RSS MiB, total open fds, /dev/shm used)
and the drift between the second sample and the last; exits 1 if a leak is evident
(RSS grew by more than --max-rss-growth MiB or fds by more than --max-fd-growth).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def _tree(root: int) -> list[int]:
    ppid_of: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        ppid_of[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    members, changed = {root}, True
    while changed:
        grown = {pid for pid, ppid in ppid_of.items() if ppid in members} | members
        changed, members = grown != members, grown
    return sorted(members)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample(root: int, minute: float) -> dict[str, float]:
    pids = _tree(root)
    shm = shutil.disk_usage("/dev/shm").used if os.path.isdir("/dev/shm") else 0
    return {"minute": round(minute, 1), "processes": len(pids),
            "rss_mib": sum(_rss_kib(p) for p in pids) / 1024, "open_fds": sum(_fds(p) for p in pids),
            "dev_shm_mib": shm / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    parser.add_argument("--max-rss-growth", type=float, default=100.0, help="MiB")
    parser.add_argument("--max-fd-growth", type=int, default=20)
    parser.add_argument("overrides", nargs="*", help="extra asyncql train overrides")
    args = parser.parse_args()
    run_dir = Path("runs/soak") / time.strftime("%Y-%m-%d_%H-%M-%S")
    command = [sys.executable, "-m", "asyncql_cli", "train", "env=CartPole-v1",
               "train.total_env_steps=1000000000", f"train.max_seconds={args.minutes * 60}",
               "train.progress=plain", f"hydra.run.dir={run_dir}", *args.overrides]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    samples = []
    try:
        while proc.poll() is None:
            time.sleep(min(args.interval, 5.0) if not samples else args.interval)
            if proc.poll() is None:
                samples.append(sample(proc.pid, (time.monotonic() - start) / 60))
                print(json.dumps(samples[-1]), flush=True)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    steady = samples[1:] or samples
    rss_growth = steady[-1]["rss_mib"] - steady[0]["rss_mib"]
    fd_growth = steady[-1]["open_fds"] - steady[0]["open_fds"]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    report = {"command": command, "exit_code": proc.returncode, "samples": samples,
              "rss_growth_mib": rss_growth, "fd_growth": fd_growth, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| minute | processes | RSS MiB (all) | open fds (all) | /dev/shm MiB |")
    print("|---:|---:|---:|---:|---:|")
    for row in samples:
        print(f"| {row['minute']} | {row['processes']} | {row['rss_mib']:.0f} | {row['open_fds']} "
              f"| {row['dev_shm_mib']:.1f} |")
    print(f"RSS drift {rss_growth:+.1f} MiB, fd drift {fd_growth:+d}, exit code {proc.returncode}")
    leaked = rss_growth > args.max_rss_growth or fd_growth > args.max_fd_growth
    return 1 if leaked or proc.returncode != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())

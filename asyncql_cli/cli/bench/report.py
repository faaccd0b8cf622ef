"""What the machine was, and the table of results."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import torch
from rich.console import Console
from rich.table import Table

from asyncql_cli.cli.bench.measure import Result

REPORT_WIDTH = 150


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_quota() -> Optional[float]:
    """CPUs allowed by the cgroup (v2 cpu.max), if limited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def machine_info(device: torch.device, torch_threads: int) -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
        "cgroup_cpu_quota": _cpu_quota(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "gymnasium": gym.__version__, "torch_threads": torch_threads, "learner_device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_report(machine: dict[str, Any], results: list[Result], env_id: str) -> None:
    console = Console(width=None if sys.stdout.isatty() else REPORT_WIDTH)  # files and pipes: no wrapping
    cores = f"{machine['usable_cores']} usable of {machine['logical_cores']} logical cores"
    if machine["cgroup_cpu_quota"] is not None:
        cores += f", cgroup quota {machine['cgroup_cpu_quota']:g} CPUs"
    console.print(f"machine: {machine['cpu']} ({cores}); torch {machine['torch']}, gymnasium "
                  f"{machine['gymnasium']}, learner device {machine['learner_device']}"
                  + (f" ({machine['gpu']})" if "gpu" in machine else ""))
    load = machine["load_average_1m"]
    console.print(f"load average (1 min) {load['start']:.2f} at start, {load['end']:.2f} at end: "
                  "absolute numbers fall when other work shares the cores; the ratios are steadier")
    table = Table(title=f"asyncql bench: {env_id}")
    for column in ("measurement", "value", "unit", "ratio", "vs", "what"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left",
                         no_wrap=column != "what")
    for r in results:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        table.add_row(r.name, f"{r.value:,.0f}", r.unit, ratio, r.baseline or "", r.note)
    console.print(table)





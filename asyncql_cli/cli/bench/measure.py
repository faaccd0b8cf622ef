"""Timing: units per second of each step, alternating slices so load hits both sides of a ratio."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

ROUNDS = 5  # alternating slices per in-process pair (see measure)


@dataclass
class Result:
    """One measurement; `ratio` is value / the value of the measurement named `baseline`."""

    name: str
    value: float
    unit: str
    baseline: Optional[str] = None
    ratio: Optional[float] = None
    note: str = ""



Step = Callable[[], int]  # does some work, returns how many units (env steps, rows, ...) it did


def warmup_seconds(seconds: float) -> float:
    return min(1.0, max(0.1, 0.2 * seconds))


def _no_sync() -> None:
    return None


def _run_for(step: Step, seconds: float, sync: Callable[[], None]) -> tuple[int, float]:
    done = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        done += step()
    sync()
    return done, time.perf_counter() - start


def measure(steps: dict[str, Step], seconds: float, sync: Callable[[], None] = _no_sync) -> dict[str, float]:
    """Units per second of each step over `seconds` of its own, after a warm-up. With several
    steps the windows alternate in ROUNDS slices, so a load spike from other work on a
    shared machine hits both sides of a ratio. `sync` waits for queued device work."""
    for step in steps.values():
        _run_for(step, warmup_seconds(seconds), sync)
    done, spent = dict.fromkeys(steps, 0), dict.fromkeys(steps, 0.0)
    rounds = ROUNDS if len(steps) > 1 else 1
    for _ in range(rounds):
        for name, step in steps.items():
            units, elapsed = _run_for(step, seconds / rounds, sync)
            done[name] += units
            spent[name] += elapsed
    return {name: done[name] / spent[name] for name in steps}


def device_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return _no_sync




def add_ratios(results: list[Result]) -> None:
    values = {r.name: r.value for r in results}
    for result in results:
        base = values.get(result.baseline) if result.baseline else None
        if base:
            result.ratio = result.value / base

"""The core budget of a parallel sweep: jobs at once x busy processes per job <= cores.

Busy processes of a job: its actors, its learners and its evaluator (1 for `parallelism=serial`).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from hydra.core.override_parser.types import IntervalSweep
from omegaconf import DictConfig, OmegaConf

from asyncql_cli.cli.common import parse_overrides
from asyncql_cli.procfs import children

EVALUATOR_PROCESSES = 1

def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _sweep_values(text: str) -> Optional[list[Any]]:
    """The values a `key=value` override can take: one value, a choice/range list, or the
    upper end of an interval; None when it cannot be told."""
    parsed = parse_overrides([text])
    if not parsed:
        return None
    override = parsed[0]
    try:
        if not override.is_sweep_override():
            return [override.value()]
        if isinstance(override.value(), IntervalSweep):
            return [override.value().end]
        return list(override.sweep_iterator())
    except Exception:  # anything unparsable: fall back to the composed value
        return None


def _candidates(config: DictConfig, key: str) -> list[Any]:
    values: list[Any] = [OmegaConf.select(config, key, default=None)]
    texts = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    if isinstance(params, DictConfig):
        texts += [f"{k}={v}" for k, v in params.items()]
    for text in texts:
        if text.split("=", 1)[0].lstrip("+~") == key:
            found = _sweep_values(text)
            if found:
                values = found
    return values


def processes_per_job(config: DictConfig) -> int:
    """Busy processes of one job: its actors and learners (the main process mostly waits);
    1 for `parallelism=serial`. The largest value any swept override can give."""
    names = [str(v) for v in _candidates(config, "parallelism.name") + _candidates(config, "parallelism")]
    if names and all(n == "serial" for n in names if n != "None"):
        return 1

    def largest(key: str, default: int) -> int:
        ints = []
        for value in _candidates(config, key):
            try:
                ints.append(int(value))
            except (TypeError, ValueError):
                continue
        return max(ints) if ints else default

    return largest("parallelism.num_actors", 1) + largest("parallelism.num_learners", 1) + EVALUATOR_PROCESSES


def worker_pids() -> list[int]:
    """This process's joblib (loky) worker processes."""
    return [pid for pid, cmd in children(os.getpid()).items() if "loky" in cmd and "resource_tracker" not in cmd]


def jobs_at_once(config: DictConfig) -> int:
    """At most how many jobs the sweeper hands the launcher together: Optuna's n_jobs (its
    batch), or the basic sweeper's number of jobs (capped by max_batch_size)."""
    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
    batch = OmegaConf.select(config, "hydra.sweeper.n_jobs", default=None)
    if isinstance(batch, int) and batch > 0:
        return batch
    if not isinstance(sweeper, DictConfig) or "BasicSweeper" not in str(sweeper.get("_target_", "")):
        return 1 << 30  # unknown sweeper: assume the launcher is kept busy
    count = 1
    texts = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    for override in parse_overrides(texts):
        if override.is_sweep_override():
            try:
                count *= len(list(override.sweep_iterator()))
            except Exception:  # a sweep that cannot be listed (an interval): unknown size
                return 1 << 30
    max_batch = sweeper.get("max_batch_size")
    return min(count, max_batch) if isinstance(max_batch, int) and max_batch > 0 else count


def resolve_n_jobs(n_jobs: Any, cores: int) -> int:
    """joblib's meaning: -1 all CPUs, -2 all but one, ...; None 1."""
    if n_jobs is None:
        return 1
    n = int(n_jobs)
    return max(1, cores + 1 + n) if n < 0 else max(1, n)

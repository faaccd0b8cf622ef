"""Inside a sweep job: a failed job never aborts the sweep, an interrupted sweep skips the rest.

The train task uses `record_failure` and `job_result`: a failed job gets a summary.json with its
error and returns its exit code (for the Optuna sweeper: the objective, or its error as text).
"""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path
from typing import Any, Union

from omegaconf import DictConfig, OmegaConf

from asyncql_cli import rundir
from asyncql_cli.cli.common import INTERRUPT_MARKER, is_optuna, log, read_json


def record_failure(run_dir: Union[str, Path], cfg: Any, reason: str, message: str) -> None:
    """Give a job that failed before the supervisor wrote its summary one with the error."""
    path = Path(run_dir) / rundir.SUMMARY
    if path.exists():
        return
    env_id = OmegaConf.select(cfg, "env.id", default=None) if isinstance(cfg, DictConfig) else None
    summary = {
        "env_id": env_id, "env_steps": 0, "updates": 0, "wall_seconds": 0.0,
        "env_steps_per_sec": 0.0, "best_eval_return": None, "best_eval_confirmed": False, "best_eval_env_steps": None,
        "best_eval_wall_seconds": None, "solved": False, "exit_reason": reason,
        "error": message, "run_dir": str(run_dir),
    }
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n")
    except OSError as exc:
        log.error("cannot write %s: %s", path, exc)


def prepare_worker() -> None:
    """Let a job in a joblib (loky) worker spawn its actors and learner.

    loky sets the worker's default start method to "loky", and multiprocessing's spawn
    hands that name to every child, which dies at once with "cannot find context for
    'loky'" (joblib#1104, hydra#964). Spawn is what the supervisor uses anyway."""
    if multiprocessing.get_start_method(allow_none=True) not in (None, "spawn", "fork", "forkserver"):
        multiprocessing.set_start_method("spawn", force=True)


def _marker(hydra_cfg: Any) -> Path:
    return Path(str(OmegaConf.select(hydra_cfg, "sweep.dir"))) / INTERRUPT_MARKER


def mark_interrupted(sweep_dir: Union[str, Path]) -> None:
    try:
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        (Path(sweep_dir) / INTERRUPT_MARKER).touch()
    except OSError as exc:
        log.error("cannot mark the sweep interrupted: %s", exc)


def sweep_interrupted(hydra_cfg: Any) -> bool:
    """Whether this sweep was interrupted (a file, so joblib workers see it too)."""
    return _marker(hydra_cfg).exists()


def job_result(hydra_cfg: Any, run_dir: Union[str, Path], code: int) -> Union[int, float, str]:
    """What a sweep job returns to Hydra: its exit code, or for the Optuna sweeper the
    objective, the best eval return from summary.json (best.pt's confirmed score; a run that never
    confirmed one, its best plain evaluation). A failed Optuna trial returns
    its error as a string: Optuna records the trial as failed, logs the text, and goes on."""
    if code == 130:
        mark_interrupted(_marker(hydra_cfg).parent)
    if not is_optuna(hydra_cfg):
        return code
    summary = read_json(Path(run_dir) / rundir.SUMMARY) or {}
    best = summary.get("best_eval_return")
    if code == 0 and isinstance(best, (int, float)) and math.isfinite(best):
        return float(best)
    reason = summary.get("exit_reason") or f"exit code {code}"
    error = summary.get("error") or ("no greedy evaluation ran" if code == 0 else "")
    return f"job failed ({reason}){': ' + error if error else ''}"

"""What a run has achieved so far, and the summary.json and hparams written at its end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from asyncql_cli import rundir
from asyncql_cli.checkpoint import write_json
from asyncql_cli.evaluation.selection import Best, EvalReport


@dataclass
class RunRecord:
    env_id: str
    solved_return: Optional[float]
    generation: int = 0
    previous_wall: float = 0.0  # wall seconds of earlier generations (resume)
    best: Best = field(default_factory=Best)
    best_wall_seconds: Optional[float] = None  # wall clock of this run to its best evaluation
    solved_at: Optional[tuple[int, float]] = None  # (env steps, wall s) of the first solved evaluation
    last_eval: Optional[float] = None
    best_periodic: Optional[float] = None  # the best plain evaluation mean, for a run that never confirmed
    exit_reason: str = "budget"
    error: Optional[str] = None

    def on_eval(self, report: EvalReport, wall: float) -> None:
        self.last_eval = report.mean
        if self.best_periodic is None or report.periodic_mean > self.best_periodic:
            self.best_periodic = report.periodic_mean
        if (self.solved_at is None and report.scored and self.solved_return is not None
                and report.mean >= self.solved_return):
            self.solved_at = (report.env_steps, wall)
        if report.new_best:
            self.best_wall_seconds = wall
        self.best = report.best

    def stop_reached(self, target: Optional[float]) -> bool:
        """train.stop_at_return is reached by best.pt itself, with eval.confirm_margin to spare."""
        return target is not None and self.best.lower is not None and self.best.lower >= target

    @property
    def best_return(self) -> Optional[float]:
        """best.pt's score; without one (no evaluation finished its confirmation), the best plain
        evaluation, which `best_eval_confirmed: false` flags."""
        return self.best.mean if self.best.mean is not None else self.best_periodic

    @property
    def solved(self) -> bool:
        return bool(self.best.mean is not None and self.solved_return is not None
                    and self.best.mean >= self.solved_return)

    def summary(self, env_steps: int, updates: int, wall: float, restarts: int, run_dir: Path) -> dict[str, Any]:
        return {
            "env_id": self.env_id, "env_steps": env_steps, "updates": updates,
            "wall_seconds": wall, "total_wall_seconds": self.previous_wall + wall,
            "generation": self.generation, "env_steps_per_sec": env_steps / wall if wall > 0 else 0.0,
            "updates_per_sec": updates / wall if wall > 0 else 0.0,
            "best_eval_return": self.best_return, "best_eval_confirmed": self.best.confirmed,
            "best_eval_env_steps": self.best.env_steps,
            "best_eval_wall_seconds": self.best_wall_seconds,
            "solved_env_steps": self.solved_at[0] if self.solved_at else None,
            "solved_wall_seconds": self.solved_at[1] if self.solved_at else None,
            "solved": self.solved, "exit_reason": self.exit_reason, "error": self.error,
            "actor_restarts": restarts, "run_dir": str(run_dir),
        }

    def hparam_metrics(self, summary: dict[str, Any]) -> dict[str, float]:
        nan = float("nan")
        best = self.best_return
        return {"hparams/best_eval_return": best if best is not None else nan,
                "hparams/best_eval_confirmed": float(self.best.confirmed),
                "hparams/env_steps_per_sec": summary["env_steps_per_sec"],
                # time to solve (NaN when not solved): the first score (confirmed, if on) >= env.solved_return
                "hparams/solved_wall_seconds": self.solved_at[1] if self.solved_at else nan,
                "hparams/solved_env_steps": self.solved_at[0] if self.solved_at else nan}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(run_dir / rundir.SUMMARY, summary)


def previous_wall_seconds(run_dir: Path) -> float:
    """Wall seconds of a run's earlier generations, from its summary.json (0 if none)."""
    try:
        summary = json.loads((run_dir / rundir.SUMMARY).read_text())
        return float(summary.get("total_wall_seconds", summary.get("wall_seconds", 0.0)))
    except (OSError, ValueError, TypeError):
        return 0.0


# the HParams columns after the swept keys: what most runs are tuned by
MAIN_HPARAMS = ("algo.lr", "algo.batch_size", "algo.gamma", "algo.n_step", "algo.replay_ratio",
                "algo.target_update", "network.hidden", "buffer.name", "parallelism.num_actors", "seed")


def job_override_keys(run_dir: Path) -> list[str]:
    """The config keys of the job's command-line overrides (a sweep job's swept values among
    them), from .hydra/overrides.yaml; none when the run was not started by Hydra."""
    path = run_dir / rundir.HYDRA / "overrides.yaml"
    if not path.is_file():
        return []
    keys = []
    for text in OmegaConf.to_container(OmegaConf.load(path)) or []:
        key = str(text).split("=", 1)[0].lstrip("+~").replace("/", ".")
        if key and not key.startswith("hydra."):
            keys.append(key)
    return keys


def ordered_hparams(flat: dict[str, Any], override_keys: list[str]) -> dict[str, Any]:
    """The flat config with the overridden keys first, then MAIN_HPARAMS, then the rest in order
    (TensorBoard's HParams tab shows the columns in this order). An overridden config group
    (`buffer=prioritized`) stands for its name or id key."""
    first: list[str] = []
    for key in override_keys:
        first += [name for name in (key, f"{key}.name", f"{key}.id") if name in flat][:1]
    first += [key for key in MAIN_HPARAMS if key in flat]
    leading = list(dict.fromkeys(first))
    return {**{key: flat[key] for key in leading}, **{k: v for k, v in flat.items() if k not in leading}}


def flat_hparams(plain: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config flattened to TensorBoard-hparams-compatible scalars and strings."""
    flat: dict[str, Any] = {}
    for key, value in plain.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat

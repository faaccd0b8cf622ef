"""The end of a sweep: one row per job (best first), printed and saved as sweep_summary.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Union

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text  # plain text cells: overrides like network.hidden=[32,32] are no markup

from asyncql_cli import rundir
from asyncql_cli.cli.common import FINISHED, INTERRUPTED, read_json

SWEEP_CSV = "sweep_summary.csv"
CSV_COLUMNS = (
    "rank", "job", "overrides", "best_eval_return", "best_eval_confirmed", "best_eval_env_steps",
    "best_eval_wall_seconds", "solved", "solved_env_steps", "solved_wall_seconds", "env_steps",
    "wall_seconds", "env_steps_per_sec", "exit_reason", "error", "job_dir", "all_overrides",
)


def _read_overrides(job_dir: Path) -> list[str]:
    try:
        data = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(item) for item in data] if isinstance(data, list) else []


def _job_number(job_dir: Path) -> int:
    head = job_dir.name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def collect_jobs(sweep_dir: Union[str, Path]) -> list[dict[str, Any]]:
    """One row per job dir of the sweep (a dir with .hydra/overrides.yaml), best first."""
    job_dirs = sorted(
        (p for p in Path(sweep_dir).iterdir() if (p / ".hydra" / "overrides.yaml").is_file()),
        key=lambda p: (_job_number(p), p.name),
    ) if Path(sweep_dir).is_dir() else []
    overrides = {p: _read_overrides(p) for p in job_dirs}
    common = set.intersection(*(set(o) for o in overrides.values())) if len(job_dirs) > 1 else set()
    rows = []
    for job_dir in job_dirs:
        summary = read_json(job_dir / rundir.SUMMARY)
        if summary is None:
            summary = {"exit_reason": "unknown", "error": f"no {rundir.SUMMARY}: the job did not finish"}
        row = {key: summary.get(key) for key in CSV_COLUMNS if key in summary}
        row.update(
            job=_job_number(job_dir) if _job_number(job_dir) < 1 << 30 else job_dir.name,
            overrides=" ".join(o for o in overrides[job_dir] if o not in common),
            all_overrides=" ".join(overrides[job_dir]),
            exit_reason=summary.get("exit_reason") or "unknown",
            error=summary.get("error"),
            job_dir=str(job_dir),
        )
        rows.append(row)

    def best_first(row: dict[str, Any]) -> tuple:
        best = row.get("best_eval_return")
        has_best = isinstance(best, (int, float)) and math.isfinite(best)
        ok = row["exit_reason"] in FINISHED
        return (not has_best, -(best if has_best else 0.0), not ok,
                _num(row.get("best_eval_env_steps")), _num(row.get("best_eval_wall_seconds")),
                str(row["job"]))

    rows.sort(key=best_first)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.inf


def write_csv(rows: list[dict[str, Any]], path: Union[str, Path]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_COLUMNS})


def _fmt(value: Any, spec: str = ",.1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec) if math.isfinite(value) else "-"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(rows: list[dict[str, Any]], sweep_dir: Union[str, Path], csv_path: Union[str, Path]) -> None:

    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=160)
    table = Table(title=Text(f"asyncql sweep: {len(rows)} jobs in {sweep_dir}"), title_justify="left")
    for name, justify in (("#", "right"), ("job", "right"), ("overrides", "left"),
                          ("best return", "right"), ("confirmed", "left"), ("steps to best", "right"),
                          ("time to best", "right"), ("solved", "left"), ("env steps", "right"),
                          ("steps/s", "right"), ("exit", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        exit_text = Text(str(row["exit_reason"]))
        if row.get("error"):
            exit_text = Text(f"{row['exit_reason']}: {row['error']}", style="red")
        solved = row.get("solved")
        if solved and row.get("solved_env_steps") is not None:
            solved_text = f"at {_fmt(row['solved_env_steps'])} steps, {_fmt(row.get('solved_wall_seconds'))} s"
        else:
            solved_text = _fmt(solved)
        wall = row.get("best_eval_wall_seconds")
        table.add_row(
            str(row["rank"]), Text(str(row["job"])), Text(row["overrides"] or "-"),
            _fmt(row.get("best_eval_return")), _fmt(row.get("best_eval_confirmed")),
            _fmt(row.get("best_eval_env_steps")),
            "-" if wall is None else f"{wall:,.1f} s", solved_text, _fmt(row.get("env_steps")),
            _fmt(row.get("env_steps_per_sec"), ",.0f"), exit_text,
        )
    console.print(table)
    console.print(f"sweep summary: {csv_path}", markup=False, highlight=False)


def sweep_exit_code(rows: list[dict[str, Any]]) -> int:
    """0 when every job finished, 130 when the sweep was interrupted, else 1 (the failed
    jobs and their errors are in the table: exit 2's one-line contract is for the command)."""
    failed = [row["exit_reason"] for row in rows if row["exit_reason"] not in FINISHED]
    if not failed:
        return 0
    return 130 if any(r in INTERRUPTED for r in failed) else 1


def write_sweep_summary(sweep_dir: Union[str, Path], show: bool = True) -> list[dict[str, Any]]:
    rows = collect_jobs(sweep_dir)
    csv_path = Path(sweep_dir) / SWEEP_CSV
    if Path(sweep_dir).is_dir():
        write_csv(rows, csv_path)
    if show:
        print_table(rows, sweep_dir, csv_path)
    return rows

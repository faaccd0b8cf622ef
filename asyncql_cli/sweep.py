"""Sweeps (`asyncql train -m ...`): per-job results, the core budget, the sweep summary.

`SweepCallback` is registered in conf/config.yaml under `hydra.callbacks.asyncql_sweep`:
- `on_multirun_start` checks the core budget of a parallel launcher (joblib):
  concurrent jobs x processes per job (`parallelism.num_actors + parallelism.num_learners`,
  1 for `parallelism=serial`) must not exceed the machine's cores. `core_budget=enforce`
  (the default) lowers `hydra.launcher.n_jobs` to fit and logs why, `warn` only logs,
  `off` does neither.
- `on_multirun_end` reads every job dir's `summary.json` and `.hydra/overrides.yaml`,
  prints a table of the jobs (best first) and writes the same rows to
  `<sweep dir>/sweep_summary.csv`. The process then exits 0 when every job finished, 130
  when the sweep was interrupted, else 1.

The task (`asyncql_cli.cli._train_task`) uses `record_failure` and `job_result` so a failed
job never aborts the sweep: it gets a summary.json with its error and returns its exit
code, or for the Optuna sweeper the objective (the best greedy eval return).

A launcher's worker process (joblib) unpickles this callback with the job, before it
resolves the job's `hydra.sweep.dir`/`subdir`: unpickling registers asyncql's resolvers.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Optional, Union

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("asyncql")

SUMMARY_FILE = "summary.json"
SWEEP_CSV = "sweep_summary.csv"
FINISHED = ("budget", "solved", "max_seconds")  # exit reasons of a job that ended well
INTERRUPTED = ("interrupted", "skipped")
MAX_NAME = 160  # characters of a job dir name (file names stop at 255 bytes)
CSV_COLUMNS = (
    "rank", "job", "overrides", "best_eval_return", "best_eval_env_steps",
    "best_eval_wall_seconds", "solved", "solved_env_steps", "solved_wall_seconds", "env_steps",
    "wall_seconds", "env_steps_per_sec", "exit_reason", "error", "job_dir", "all_overrides",
)

INTERRUPT_MARKER = ".interrupted"  # in the sweep dir: jobs not yet started are skipped


# ------------------------------------------------------------------ job dir names
_swept_keys: Optional[frozenset[str]] = None  # what the running sweep varies (set at its start)


def _parse(texts: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = []
    for text in texts:
        try:
            parsed.append(parser.parse_overrides([text])[0])
        except Exception:  # not ours to report: Hydra rejects it with a proper message
            continue
    return parsed


def swept_keys(config: DictConfig) -> frozenset[str]:
    """Keys a sweep varies: sweep overrides of the command line (`seed=0,1`) and the
    sweeper's `params` (Optuna's search space, the basic sweeper's params)."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    texts = [f"{k}={v}" for k, v in params.items()] if isinstance(params, DictConfig) else []
    # the command line comes last and wins: a fixed value there takes a key out of the search
    texts += [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    swept: set[str] = set()
    for override in _parse(texts):
        if override.is_sweep_override():
            swept.add(override.key_or_group)
        else:
            swept.discard(override.key_or_group)
    return frozenset(swept)


def _short(value: str) -> str:
    """A float with many digits (Optuna's samples) shortened to 4 significant ones."""
    if re.fullmatch(r"-?\d*\.\d{5,}(e-?\d+)?", value):
        return format(float(value), ".4g")
    return value


def job_dirname(_root_: DictConfig) -> str:
    """The `${job_dirname:}` resolver of hydra.sweep.subdir: `<job number>_<env id>` then the
    job's values of the swept keys (all its overrides when the sweep is unknown), without
    hydra.job.config.override_dirname.exclude_keys, e.g. `3_CartPole-v1_algo.lr=0.0003,seed=1`.
    Safe as one file name: separators and shell-hostile characters become `_`, long names
    are cut (the job number keeps them unique)."""
    num = OmegaConf.select(_root_, "hydra.job.num", default=0)
    env_id = str(OmegaConf.select(_root_, "env.id", default="") or "")
    exclude = set(OmegaConf.select(_root_, "hydra.job.config.override_dirname.exclude_keys", default=[]) or [])
    texts = [str(o) for o in OmegaConf.select(_root_, "hydra.overrides.task", default=[]) or []]
    items = sorted(
        f"{o.get_key_element()}={_short(o.get_value_element_as_str())}" for o in _parse(texts)
        if o.key_or_group not in exclude and (_swept_keys is None or o.key_or_group in _swept_keys)
    )
    name = "_".join(part for part in (env_id, ",".join(items)) if part)
    name = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", name)
    return f"{num}_{name}"[:MAX_NAME] if name else str(num)


def _register_resolvers() -> None:
    from asyncql_cli.cli import _register_resolvers as register_cli_resolvers

    register_cli_resolvers()


# ------------------------------------------------------------------ inside a job
def record_failure(run_dir: Union[str, Path], cfg: Any, reason: str, message: str) -> None:
    """Give a job that failed before the supervisor wrote its summary one with the error."""
    path = Path(run_dir) / SUMMARY_FILE
    if path.exists():
        return
    env_id = OmegaConf.select(cfg, "env.id", default=None) if isinstance(cfg, DictConfig) else None
    summary = {
        "env_id": env_id, "env_steps": 0, "updates": 0, "wall_seconds": 0.0,
        "env_steps_per_sec": 0.0, "best_eval_return": None, "best_eval_env_steps": None,
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
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) not in (None, "spawn", "fork", "forkserver"):
        multiprocessing.set_start_method("spawn", force=True)


def is_optuna(hydra_cfg: Any) -> bool:
    target = OmegaConf.select(hydra_cfg, "sweeper._target_", default="") or ""
    return "optuna" in str(target).lower()


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
    objective, the best greedy eval return from summary.json. A failed Optuna trial returns
    its error as a string: Optuna records the trial as failed, logs the text, and goes on."""
    if code == 130:
        mark_interrupted(_marker(hydra_cfg).parent)
    if not is_optuna(hydra_cfg):
        return code
    summary = _read_json(Path(run_dir) / SUMMARY_FILE) or {}
    best = summary.get("best_eval_return")
    if code == 0 and isinstance(best, (int, float)) and math.isfinite(best):
        return float(best)
    reason = summary.get("exit_reason") or f"exit code {code}"
    error = summary.get("error") or ("no greedy evaluation ran" if code == 0 else "")
    return f"job failed ({reason}){': ' + error if error else ''}"


# ------------------------------------------------------------------ the summary
def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_overrides(job_dir: Path) -> list[str]:
    import yaml

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
        summary = _read_json(job_dir / SUMMARY_FILE)
        if summary is None:
            summary = {"exit_reason": "unknown", "error": f"no {SUMMARY_FILE}: the job did not finish"}
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
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # plain text cells: overrides like network.hidden=[32,32] are no markup

    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=160)
    table = Table(title=Text(f"asyncql sweep: {len(rows)} jobs in {sweep_dir}"), title_justify="left")
    for name, justify in (("#", "right"), ("job", "right"), ("overrides", "left"),
                          ("best return", "right"), ("steps to best", "right"),
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
            _fmt(row.get("best_eval_return")), _fmt(row.get("best_eval_env_steps")),
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


# ------------------------------------------------------------------ core budget
def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _sweep_values(text: str) -> Optional[list[Any]]:
    """The values a `key=value` override can take: one value, a choice/range list, or the
    upper end of an interval; None when it cannot be told."""
    from hydra.core.override_parser.types import IntervalSweep

    parsed = _parse([text])
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

    return largest("parallelism.num_actors", 1) + largest("parallelism.num_learners", 1)


def _worker_pids() -> list[int]:
    """This process's joblib (loky) worker processes, from /proc (Linux)."""
    me, pids = os.getpid(), []
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return pids
    for entry in entries:
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) != me:
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if "loky" in cmd and "resource_tracker" not in cmd:
            pids.append(int(entry))
    return pids


def _jobs_at_once(config: DictConfig) -> int:
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
    for override in _parse(texts):
        if override.is_sweep_override():
            try:
                count *= len(list(override.sweep_iterator()))
            except Exception:  # a sweep that cannot be listed (an interval): unknown size
                return 1 << 30
    max_batch = sweeper.get("max_batch_size")
    return min(count, max_batch) if isinstance(max_batch, int) and max_batch > 0 else count


def _resolve_n_jobs(n_jobs: Any, cores: int) -> int:
    """joblib's meaning: -1 all CPUs, -2 all but one, ...; None 1."""
    if n_jobs is None:
        return 1
    n = int(n_jobs)
    return max(1, cores + 1 + n) if n < 0 else max(1, n)


class SweepCallback(Callback):
    def __init__(self, core_budget: str = "enforce", table: bool = True) -> None:
        if core_budget not in ("enforce", "warn", "off"):
            raise ValueError(f"core_budget must be enforce, warn or off, got {core_budget!r}")
        self.core_budget = core_budget
        self.table = table
        self.swept_keys: Optional[frozenset[str]] = None
        self._previous_handlers: dict[int, Any] = {}
        self._signals = 0
        self._sweep_dir = ""

    # -- signals: a sweep stops cleanly ----------------------------------------------
    def _install_signal_handlers(self, sweep_dir: str) -> None:
        """Main process of the sweep. A job running here (basic launcher) replaces these
        handlers with the supervisor's while it runs. Under joblib, the first Ctrl-C
        must not raise KeyboardInterrupt here: joblib would kill the workers in the middle
        of their jobs' clean shutdown. The workers got the same SIGINT from the terminal
        (one process group) and stop their jobs themselves; SIGTERM, which usually reaches
        this process alone, is passed on to them. Jobs not yet started are skipped
        (marker file); a second signal forces the exit."""
        import signal

        self._sweep_dir, self._signals = sweep_dir, 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave signals alone
                return

    def _restore_signal_handlers(self) -> None:
        import signal

        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, _frame: Any) -> None:
        import signal

        self._signals += 1
        if self._signals > 1:
            self._restore_signal_handlers()
            raise KeyboardInterrupt
        mark_interrupted(self._sweep_dir)
        log.warning("%s received: running jobs stop cleanly, the rest of the sweep is skipped "
                    "(again to force)", signal.Signals(signum).name)
        if signum == signal.SIGTERM:
            for pid in _worker_pids():
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled in a launcher's worker before it resolves the job's dirs.
        global _swept_keys
        self.__dict__.update(state)
        _swept_keys = self.__dict__.get("swept_keys")
        _register_resolvers()

    # -- start: the core budget ----------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _swept_keys
        self.swept_keys = _swept_keys = swept_keys(config)
        self._install_signal_handlers(str(OmegaConf.select(config, "hydra.sweep.dir")))
        if self.core_budget == "off":
            return
        launcher = OmegaConf.select(config, "hydra.launcher", default=None)
        if not isinstance(launcher, DictConfig) or "n_jobs" not in launcher:
            return  # the basic launcher runs one job at a time
        cores = available_cores()
        n_jobs = _resolve_n_jobs(launcher.n_jobs, cores)
        concurrent = min(n_jobs, _jobs_at_once(config))
        per_job = processes_per_job(config)
        if concurrent * per_job <= cores:
            log.info("core budget: %d concurrent jobs x %d processes per job <= %d cores",
                     concurrent, per_job, cores)
            return
        fits = max(1, cores // per_job)
        what = (f"core budget: hydra.launcher.n_jobs={launcher.n_jobs} runs {concurrent} jobs at once x "
                f"{per_job} processes per job (parallelism.num_actors + parallelism.num_learners) "
                f"= {concurrent * per_job} busy processes on {cores} cores")
        if self.core_budget == "warn" or fits >= concurrent:
            log.warning("%s: oversubscribed, every job slows down", what)
        else:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.launcher.n_jobs = fits
            log.warning("%s; lowered hydra.launcher.n_jobs to %d (pass "
                        "hydra.callbacks.asyncql_sweep.core_budget=warn to oversubscribe anyway)",
                        what, fits)
        if per_job > cores:
            log.warning("core budget: one job alone runs %d processes on %d cores; lower "
                        "parallelism.num_actors", per_job, cores)

    # -- end: the table, the csv, the exit code ------------------------------------
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._restore_signal_handlers()
        sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir"))
        rows = write_sweep_summary(sweep_dir, show=self.table)
        code = sweep_exit_code(rows)
        if code:
            # Hydra ignores a task's return value: the sweep's exit status is decided here.
            raise SystemExit(code)

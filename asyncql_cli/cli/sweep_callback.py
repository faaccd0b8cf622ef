"""The sweep's Hydra callback, registered in conf/config.yaml as `hydra.callbacks.asyncql_sweep`:

- `on_multirun_start` checks the core budget of a parallel launcher (joblib): `core_budget=enforce`
  (the default) lowers `hydra.launcher.n_jobs` to fit and logs why, `warn` only logs, `off`
  does neither; and it installs the sweep's signal handlers (a sweep stops cleanly);
- `on_multirun_end` writes the sweep table and `sweep_summary.csv`, and exits 0 when every job
  finished, 130 when the sweep was interrupted, else 1.

A launcher's worker process (joblib) unpickles this callback with the job, before it resolves the
job's `hydra.sweep.dir`/`subdir`: unpickling registers asyncql's resolvers.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from asyncql_cli.cli import sweep_naming
from asyncql_cli.cli.common import log
from asyncql_cli.cli.hydra_app import register_resolvers
from asyncql_cli.cli.sweep_budget import available_cores, jobs_at_once, processes_per_job, resolve_n_jobs, worker_pids
from asyncql_cli.cli.sweep_job import mark_interrupted
from asyncql_cli.cli.sweep_table import sweep_exit_code, write_sweep_summary


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
        self._sweep_dir, self._signals = sweep_dir, 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave signals alone
                return

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            self._restore_signal_handlers()
            raise KeyboardInterrupt
        mark_interrupted(self._sweep_dir)
        log.warning("%s received: running jobs stop cleanly, the rest of the sweep is skipped "
                    "(again to force)", signal.Signals(signum).name)
        if signum == signal.SIGTERM:
            for pid in worker_pids():
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled in a launcher's worker before it resolves the job's dirs.
        self.__dict__.update(state)
        sweep_naming.swept = self.__dict__.get("swept_keys")
        register_resolvers()

    # -- start: the core budget ----------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.swept_keys = sweep_naming.swept = sweep_naming.swept_keys(config)
        self._install_signal_handlers(str(OmegaConf.select(config, "hydra.sweep.dir")))
        if self.core_budget == "off":
            return
        launcher = OmegaConf.select(config, "hydra.launcher", default=None)
        if not isinstance(launcher, DictConfig) or "n_jobs" not in launcher:
            return  # the basic launcher runs one job at a time
        cores = available_cores()
        n_jobs = resolve_n_jobs(launcher.n_jobs, cores)
        concurrent = min(n_jobs, jobs_at_once(config))
        per_job = processes_per_job(config)
        if concurrent * per_job <= cores:
            log.info("core budget: %d concurrent jobs x %d processes per job <= %d cores",
                     concurrent, per_job, cores)
            return
        fits = max(1, cores // per_job)
        what = (f"core budget: hydra.launcher.n_jobs={launcher.n_jobs} runs {concurrent} jobs at once x "
                f"{per_job} processes per job (parallelism.num_actors + parallelism.num_learners + 1 evaluator) "
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

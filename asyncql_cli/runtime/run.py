"""One training run: `train(config, run_dir)`, callable from tests without Hydra's wrapper.

The main process checks the input (env, memory, run dir, resume files: `BadInput`, exit 2)
before any child starts, allocates the shared memory (runtime/wiring.py), starts the learners,
the actors and the evaluator (or steps them in-process with `parallelism=serial`), and then only
loops: drain the children's messages into TensorBoard and the log, show progress, watch the
children, and decide when to stop (budget, time, train.stop_at_return reached by best.pt, Ctrl-C
or SIGTERM, a crashed child). No step of the loop blocks for longer than a tick: evaluation runs
in its own process. At the end: actors and learners stop and write their last checkpoint, the
evaluator gets its final evaluation and video, and summary.json and the hparams are written.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np

from asyncql_cli import rundir
from asyncql_cli.checkpoint import load_checkpoint, save_replay
from asyncql_cli.config.loading import as_dict
from asyncql_cli.config.schema import Config
from asyncql_cli.envs.make import inspect_env
from asyncql_cli.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, BadInput
from asyncql_cli.evaluation.selection import Best
from asyncql_cli.runtime.forkserver import server_pid, stop_process_server
from asyncql_cli.runtime.processes import ProcessGroup
from asyncql_cli.runtime.record import RunRecord, flat_hparams, job_override_keys, ordered_hparams, write_summary
from asyncql_cli.runtime.reporting import Reporter
from asyncql_cli.runtime.restore import Resumed, apply_resume, read_resume
from asyncql_cli.runtime.serial import SerialRunner
from asyncql_cli.runtime.stats import StatsRouter
from asyncql_cli.runtime.wiring import Wiring, check_memory

log = logging.getLogger("asyncql")

TICK_SECONDS = 0.05  # the main loop's period between looks at the children and the clock


class Run:
    def __init__(self, config: Config, run_dir: Path):
        self.config, self.run_dir = config, run_dir
        self.spec = inspect_env(config.env, config.network.name)
        p = config.parallelism
        layout = Wiring(config, self.spec, run_dir)
        self.resumed: Optional[Resumed] = (read_resume(run_dir, self.spec, config.network, layout.num_learners,
                                                       layout.hogwild) if config.resume else None)
        self.wiring = Wiring(config, self.spec, run_dir, self.resumed.generation) if self.resumed else layout
        if not self.wiring.uses_ray:  # with Ray the replay lives on the learner's node (its agent checks)
            check_memory(self.wiring.storage_bytes())
        _check_writable(run_dir)
        self.shared = self.wiring.allocate(with_storage=not self.wiring.uses_ray)
        if self.resumed is not None:
            apply_resume(self.resumed, self.shared, run_dir)
        best = self.resumed.best if self.resumed else Best()
        self.record = RunRecord(self.spec.env_id, config.env.solved_return, self.wiring.generation,
                                self.resumed.previous_wall if self.resumed else 0.0, best)
        self.reporter = Reporter(str(run_dir), config.train.total_env_steps, config.train.progress,
                                 purge_step=self.shared.counters.total_env_steps() if self.resumed else None,
                                 greedy_epsilon=config.train.greedy_epsilon)
        self.reporter.best_eval = best.mean
        self.group: Optional[ProcessGroup] = None if self.wiring.serial else ProcessGroup(
            self.shared.counters, p.heartbeat_timeout_seconds, p.max_actor_restarts)
        self.router = StatsRouter(self.shared.stats, self.reporter, self.shared.counters, self.record,
                                  self.group.errors if self.group else {}, self.wiring.num_updaters > 1)
        self.serial: Optional[SerialRunner] = SerialRunner(
            self.wiring, self.shared, best, self._learner_state(0)) if self.wiring.serial else None
        self.cluster: Optional[Any] = None
        if self.wiring.uses_ray:
            from asyncql_cli.runtime.cluster.driver import RayWorkers  # Ray is optional: only here

            self.cluster = RayWorkers(self.wiring, self.shared, self.router, run_dir, self.resumed)
        self.interrupts = 0
        self.start = time.monotonic()

    def _learner_state(self, index: int) -> Optional[dict[str, Any]]:
        return self.resumed.learner_states[index] if self.resumed is not None else None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            log.warning("%s received: stopping cleanly (again to force)", signal.Signals(signum).name)
        else:
            log.warning("second interrupt: forcing exit")
            self.shared.evaluator_control.abort.set()

    # -- the run -------------------------------------------------------------------------------
    def execute(self) -> int:
        log.info("run dir %s (main pid %d)", self.run_dir, os.getpid())
        if self.shared.storage is not None:
            log.info("%s (%s of shared memory)", self.shared.storage.describe(),
                     _human_bytes(self.wiring.storage_bytes()))
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.start = time.monotonic()
        try:
            if self.serial is not None:
                self.serial.run(self.loop)
            else:
                self._start_children()
                self.loop(self._tick)
        finally:
            try:
                self._end_children()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return self._finish()

    def _start_children(self) -> None:
        """Learners and actors here (or on the cluster's nodes), then the evaluator here."""
        assert self.group is not None
        ctx = self.shared.ctx
        if self.cluster is not None:
            self.cluster.start()
        else:
            for index in range(self.wiring.num_learners):
                self.group.start(self.wiring.learner_child(index, self.shared, self._learner_state(index)), ctx)
            for actor_id in range(self.config.parallelism.num_actors):
                self.group.start(self.wiring.actor_child(actor_id, self.shared), ctx)
        self.group.start(self.wiring.evaluator_child(self.shared, self.record.best), ctx)
        forkserver = server_pid()
        if forkserver is not None:
            log.info("forkserver started (pid %d)", forkserver)

    def loop(self, step: Callable[[], None]) -> None:
        t = self.config.train
        last_log = time.monotonic()
        last_steps, last_updates = self.shared.counters.total_env_steps(), self.shared.counters.updates()
        while True:
            step()
            self.router.drain()
            now = time.monotonic()
            steps, updates = self.shared.counters.total_env_steps(), self.shared.counters.updates()
            if now - last_log >= t.log_interval_seconds:
                seconds = now - last_log
                self._log_perf(steps, (steps - last_steps) / seconds, (updates - last_updates) / seconds)
                last_log, last_steps, last_updates = now, steps, updates
            self.reporter.progress(steps, updates, self._replay_size())
            reason = self._stop_reason(steps, now)
            if reason is not None:
                self.record.exit_reason = reason
                if now > last_log:  # the rates of the last stretch: every curve reaches the end
                    seconds = now - last_log
                    self._log_perf(steps, (steps - last_steps) / seconds, (updates - last_updates) / seconds)
                return

    def _tick(self) -> None:
        if self.cluster is not None:
            self.cluster.sync()
        time.sleep(TICK_SECONDS)

    def _replay_size(self) -> int:
        return self.cluster.replay_size if self.cluster is not None else self.shared.replay_size()

    def _stop_reason(self, steps: int, now: float) -> Optional[str]:
        t = self.config.train
        if self.record.stop_reached(t.stop_at_return):
            return "solved"
        if self.interrupts:
            return "interrupted"
        if self.cluster is not None and self.cluster.error is not None:
            self.record.error = self.cluster.error
            return "error"
        if self.group is not None:
            self.record.error = self.group.check(self.router.drain, self._respawn, self.shared.ctx)
            if self.record.error is not None:
                return "error"
        if steps >= t.total_env_steps:
            return "budget"
        if t.max_seconds is not None and now - self.start >= t.max_seconds:
            return "max_seconds"
        return None

    def _respawn(self, role: str) -> Any:
        return self.wiring.actor_child(int(role.rsplit("-", 1)[1]), self.shared)

    def _log_perf(self, steps: int, steps_per_sec: float, updates_per_sec: float) -> None:
        r = self.reporter
        r.env_steps_per_sec, r.updates_per_sec = steps_per_sec, updates_per_sec
        r.scalar("perf/env_steps_per_sec", steps_per_sec, steps)
        r.scalar("perf/updates_per_sec", updates_per_sec, steps)
        r.scalar("replay/size", self._replay_size(), steps)
        r.scalar("actor/policy_lag", self._policy_lag(), steps)
        if self.cluster is not None:
            shipped, lost, tick_ms, broadcast_ms = self.cluster.stats.take()
            seconds = max(self.config.train.log_interval_seconds, 1e-9)
            r.scalar("ray/rows_shipped_per_sec", shipped / seconds, steps)
            r.scalar("ray/rows_lost", lost, steps)
            r.scalar("ray/tick_ms", tick_ms, steps)
            r.scalar("ray/weight_broadcast_ms", broadcast_ms, steps)
            for node, lag in self.cluster.policy_lag_by_node().items():
                r.scalar(f"actor/policy_lag/{node}", lag, steps)

    def _policy_lag(self) -> float:
        """Mean over actors of (updates of the network it follows) - (updates of its weights)."""
        counters = self.shared.counters
        acted_with = counters.actor_updates()
        if self.wiring.hogwild:
            followed = np.full_like(acted_with, counters.updates())
        else:
            per_learner = np.asarray(counters.learner_updates())
            followed = per_learner[np.arange(counters.num_actors) % len(per_learner)]
        return float((followed - acted_with).mean())

    # -- the end -------------------------------------------------------------------------------
    def _end_children(self) -> None:
        """Actors and learners stop (learners write last.pt); then the evaluator, with a final
        evaluation when the run ended on its budget, and best.pt's video unless interrupted."""
        record, control = self.record, self.shared.evaluator_control
        clean = record.error is None and self.interrupts < 2
        if clean and record.exit_reason in ("budget", "max_seconds"):
            control.final_eval.set()
        if clean and record.exit_reason != "interrupted" and self.config.eval.video:
            control.end_video.set()
        if not clean:
            control.abort.set()
        forced = lambda: self.interrupts >= 2  # noqa: E731
        if self.serial is not None:
            self.serial.finish_evaluation()
            self.router.drain()
            return
        assert self.group is not None
        if self.cluster is not None:
            self.cluster.stop(forced())
        workers = [role for role in self.group.children if role != "evaluator"]
        timeout = self.config.parallelism.join_timeout_seconds
        self.group.stop(workers, self.shared.stop, timeout, self.router.drain, forced)
        if "evaluator" in self.group.children:
            self.group.stop(["evaluator"], self.shared.evaluator_stop, None, self.router.drain, forced)
        self.router.drain()
        self.shared.stats.close()
        self.shared.stats.join_thread()
        self.group.close()
        stop_process_server()
        if self.cluster is not None:
            self.cluster.close()

    def _finish(self) -> int:
        wall = time.monotonic() - self.start
        counters = self.shared.counters
        if self.config.checkpoint.save_replay and self.interrupts < 2 and self.shared.storage is not None:
            self._save_replay()  # (with Ray the learner's agent saved it and sent it here)
        restarts = (self.cluster.restarts() if self.cluster is not None
                    else self.group.restarts if self.group else 0)
        summary = self.record.summary(counters.total_env_steps(), counters.updates(), wall, restarts, self.run_dir)
        write_summary(self.run_dir, summary)
        params = ordered_hparams(flat_hparams(as_dict(self.config)), job_override_keys(self.run_dir))
        self.reporter.write_hparams(params, self.record.hparam_metrics(summary), counters.total_env_steps())
        self.reporter.close()
        self.reporter.final_table(summary)
        if self.record.error is not None:
            log.error("run failed: %s", self.record.error)
            return EXIT_ERROR
        return EXIT_INTERRUPTED if self.record.exit_reason == "interrupted" else EXIT_OK

    def _save_replay(self) -> None:
        last = self.run_dir / rundir.CHECKPOINTS / rundir.LAST
        learned = load_checkpoint(last).get("sampler") if last.is_file() else None
        rows = save_replay(self.shared.storage, self.run_dir / rundir.CHECKPOINTS / rundir.REPLAY, learned)
        log.info("saved %d replay rows to %s/%s", rows, rundir.CHECKPOINTS, rundir.REPLAY)


def _check_writable(run_dir: Path) -> None:
    try:
        (run_dir / rundir.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"run directory {run_dir} is not writable ({exc.strerror})") from None
    if not os.access(run_dir, os.W_OK):
        raise BadInput(f"run directory {run_dir} is not writable")


def _human_bytes(count: int) -> str:
    return f"{count / 1e9:,.2f} GB" if count >= 1e9 else f"{count / 1e6:,.1f} MB"


def train(config: Config, run_dir: str | Path) -> int:
    """Run and return the exit code. Raises BadInput for user errors."""
    return Run(config, Path(run_dir)).execute()

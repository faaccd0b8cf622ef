"""The children's messages (stats queue) into TensorBoard, the log and the run's record.

Main process only: it owns the run's one SummaryWriter (runtime/reporting.py); children send
numbers and texts, never write event files themselves.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any, Optional

from asyncql_cli.evaluation.selection import EvalReport
from asyncql_cli.evaluation.video import add_clip_to_tensorboard
from asyncql_cli.runtime.record import RunRecord
from asyncql_cli.runtime.reporting import Reporter

log = logging.getLogger("asyncql")


class StatsRouter:
    def __init__(self, stats: Any, reporter: Reporter, counters: Any, record: RunRecord, errors: dict[str, str],
                 several_learners: bool):
        self.stats, self.reporter, self.counters, self.record = stats, reporter, counters, record
        self.errors = errors  # a child's own last words, by role (the process group reads them)
        self.several_learners = several_learners

    def drain(self) -> None:
        while True:
            try:
                message = self.stats.get_nowait()
            except (queue.Empty, OSError, ValueError, EOFError):
                return
            self.handle(message)

    def handle(self, message: tuple) -> None:
        """One message of a child (from this process's queue, or from a node agent's tick)."""
        getattr(self, f"_on_{message[0]}")(*message[1:])

    def _on_episode(self, _actor: int, ret: float, length: int, epsilon: float, slot: Optional[int] = None) -> None:
        self.reporter.episode(ret, length, epsilon, self.counters.total_env_steps(), slot)

    def _on_epsilon(self, _actor: int, first_slot: int, epsilons: list[float]) -> None:
        self.reporter.epsilons(first_slot, epsilons, self.counters.total_env_steps())

    def _on_learner(self, index: int, means: dict[str, float], _updates: int, skipped: int) -> None:
        steps = self.counters.total_env_steps()
        for name, value in means.items():
            self.reporter.scalar(f"learner/{name}", value, steps)
            if self.several_learners:
                self.reporter.scalar(f"learner{index}/{name}", value, steps)
        if skipped:
            self.reporter.scalar("learner/skipped_updates", skipped, steps)

    def _on_error(self, role: str, reason: str, text: str) -> None:
        self.errors[role] = reason
        log.error("%s failed: %s\n%s", role, reason, text)

    def _on_device(self, index: int, description: str) -> None:
        log.info("learner-%d device: %s", index, description)

    def _on_warning(self, text: str) -> None:
        log.warning("%s", text)

    def _on_eval(self, report: EvalReport) -> None:
        steps, r = report.env_steps, self.reporter
        for index, mean in report.learner_means.items():
            r.scalar(f"learner{index}/eval_mean_return", mean, steps)
        r.scalar("eval/mean_return", report.periodic_mean, steps)
        log.info("eval at %d env steps (%d updates): mean return %.1f over %d episodes",
                 steps, report.updates, report.periodic_mean, report.periodic_episodes)
        if report.confirmed is not None:
            mean, lower = report.confirmed
            r.scalar("eval/confirmed_mean_return", mean, steps)
            r.scalar("eval/confirmed_lower_bound", lower, steps)
            log.info("confirmation at %d env steps: mean return %.1f over %d episodes (lower bound %.1f)",
                     steps, mean, report.episodes, lower)
        self.record.on_eval(report, time.monotonic() - r.start)
        r.eval_return, r.best_eval = report.mean, report.best.mean

    def _on_video(self, steps: int, clip: Any, path: str, returns: list[float]) -> None:
        add_clip_to_tensorboard(self.reporter.writer, "eval/video", clip, steps)
        log.info("video of %d greedy episodes (returns %s) written to %s", len(returns),
                 ", ".join(f"{r:.1f}" for r in returns), path)

"""What the user sees: TensorBoard scalars, the live progress display, the final table.

Main process only: it owns the run's single SummaryWriter (two writers in one directory
confuse TensorBoard), so children send their numbers through the stats queue. The x axis
of every scalar is the global env-step count. On a terminal a rich live display shows
progress; otherwise (CI, `nohup`, pipes) a plain line goes to the log periodically.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections import deque
from typing import Any, Optional

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from asyncql_cli.config.schema import TrainConfig

log = logging.getLogger("asyncql")

PLAIN_LINE_SECONDS = 5.0


def _fmt(value: Optional[float], spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Reporter:
    def __init__(self, run_dir: str, total_env_steps: int, mode: str, purge_step: Optional[int] = None,
                 greedy_epsilon: float = TrainConfig.greedy_epsilon):
        self.writer = SummaryWriter(run_dir, purge_step=purge_step)
        self.total_env_steps = total_env_steps
        self.greedy_epsilon = greedy_epsilon  # train.greedy_epsilon: slots at most this are "greedy"
        self.slot_epsilons: dict[int, float] = {}  # the current epsilon of every env slot heard of
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.episodes = 0
        self.eval_return: Optional[float] = None
        self.best_eval: Optional[float] = None
        self.env_steps_per_sec = 0.0
        self.updates_per_sec = 0.0
        self.start = time.monotonic()
        self._last_plain = 0.0
        self.console = Console(stderr=True)
        use_rich = mode == "rich" or (mode == "auto" and sys.stderr.isatty())
        self.plain = mode in ("plain", "auto") and not use_rich
        self.live: Optional[Live] = None
        self._swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
        if use_rich:
            self.live = Live(self._panel(0, 0, 0), console=self.console, refresh_per_second=4,
                             transient=False, redirect_stdout=False, redirect_stderr=False)
            self._route_console_logging()
            self.live.start()

    def _route_console_logging(self) -> None:
        """While the live display runs, console log lines go through its console, so they
        print above the display instead of tearing it (file handlers are left alone)."""
        for logger in (logging.getLogger(), log):
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    rich_handler = RichHandler(console=self.console, show_path=False, markup=False)
                    rich_handler.setLevel(handler.level)
                    logger.removeHandler(handler)
                    logger.addHandler(rich_handler)
                    self._swapped.append((logger, handler, rich_handler))

    # -- scalars -------------------------------------------------------------------------
    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def episode(self, ret: float, length: int, epsilon: float, step: int, slot: Optional[int] = None) -> None:
        """Every episode goes to train/episode_return_all; train/episode_return (and the recent
        return of the progress display) keeps only those of the greedy slots."""
        self.episodes += 1
        if slot is not None:
            self.slot_epsilons[slot] = epsilon
        self.scalar("train/episode_return_all", ret, step)
        self.scalar("train/episode_length", length, step)
        self.scalar("train/epsilon", epsilon, step)
        if self.is_greedy(epsilon):
            self.recent_returns.append(ret)
            self.scalar("train/episode_return", ret, step)

    def is_greedy(self, epsilon: float) -> bool:
        """At most train.greedy_epsilon; while no slot of the run is, the lowest epsilon of them all."""
        lowest = min(self.slot_epsilons.values(), default=epsilon)
        if lowest <= self.greedy_epsilon:
            return epsilon <= self.greedy_epsilon
        return epsilon <= lowest

    def epsilons(self, first_slot: int, epsilons: list[float], step: int) -> None:
        """An actor's env slots' current epsilons: exploration/epsilon/slot<j>."""
        for offset, epsilon in enumerate(epsilons):
            self.slot_epsilons[first_slot + offset] = epsilon
            self.scalar(f"exploration/epsilon/slot{first_slot + offset}", epsilon, step)

    @property
    def recent_return(self) -> Optional[float]:
        return statistics.fmean(self.recent_returns) if self.recent_returns else None

    # -- progress ------------------------------------------------------------------------
    def _panel(self, env_steps: int, updates: int, replay_size: int) -> Table:
        elapsed = time.monotonic() - self.start
        remaining = self.total_env_steps - env_steps
        eta = remaining / self.env_steps_per_sec if self.env_steps_per_sec > 0 else None
        fraction = min(1.0, env_steps / max(1, self.total_env_steps))
        bar = "█" * int(30 * fraction) + "░" * (30 - int(30 * fraction))
        table = Table.grid(padding=(0, 2))
        table.add_row("[bold]asyncql[/]", f"{bar} {env_steps:,}/{self.total_env_steps:,} env steps")
        table.add_row(
            "rates", f"{self.env_steps_per_sec:,.0f} env steps/s   {self.updates_per_sec:,.0f} updates/s"
            f"   updates {updates:,}   replay {replay_size:,}"
        )
        table.add_row(
            "returns", f"recent {_fmt(self.recent_return)} ({self.episodes} episodes)   "
            f"eval {_fmt(self.eval_return)}   best eval {_fmt(self.best_eval)}"
        )
        table.add_row("time", f"elapsed {_duration(elapsed)}   ETA {_duration(eta)}")
        return table

    def progress(self, env_steps: int, updates: int, replay_size: int) -> None:
        if self.live is not None:
            self.live.update(self._panel(env_steps, updates, replay_size))
        elif self.plain and time.monotonic() - self._last_plain >= PLAIN_LINE_SECONDS:
            self._last_plain = time.monotonic()
            log.info(
                "env steps %d/%d | %.0f steps/s | updates %d (%.0f/s) | replay %d | "
                "recent return %s | eval %s | best %s",
                env_steps, self.total_env_steps, self.env_steps_per_sec, updates,
                self.updates_per_sec, replay_size, _fmt(self.recent_return),
                _fmt(self.eval_return), _fmt(self.best_eval),
            )

    # -- end of run ----------------------------------------------------------------------
    def write_hparams(self, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """Into the run's own event file (add_hparams would make a sub-run directory)."""
        exp, ssi, sei = hparams(params, metrics)
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.scalar(tag, value, step)

    def final_table(self, summary: dict[str, Any]) -> None:
        table = Table(title="asyncql run summary", show_header=False)
        for key in ("env_id", "exit_reason", "env_steps", "updates", "wall_seconds",
                    "env_steps_per_sec", "updates_per_sec", "best_eval_return", "best_eval_confirmed", "solved",
                    "run_dir"):
            value = summary.get(key)
            text = f"{value:,.1f}" if isinstance(value, float) else str(value)
            table.add_row(key, text)
        self.console.print(table)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        for logger, original, rich_handler in self._swapped:
            logger.removeHandler(rich_handler)
            logger.addHandler(original)
        self._swapped = []
        self.writer.flush()
        self.writer.close()

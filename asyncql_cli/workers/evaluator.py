"""The evaluator: greedy evaluation, confirmation, best.pt and videos, off the main loop.

Runs in its own process (in the main process with `parallelism=serial`). Every
`eval.interval_seconds` it copies each published network out of its parameter store (a reader
of the seqlock), lets `evaluation.selection` score them, confirm and keep best.pt, and sends the
report to the main process, which logs it, writes it to TensorBoard and decides the stop. It is
the only writer of best.pt and of videos/; it beats its heartbeat after every env step, so a long
Atari evaluation is not mistaken for a hung process.

Control (`EvaluatorControl`, events set by the main process): `stop` ends the loop, and a
periodic evaluation in progress with it; set before it, `final_eval` asks for one more
evaluation of the last published weights and `end_video` for best.pt's video; `abort` ends even
those in the middle (a second Ctrl-C).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from asyncql_cli.algo.networks import build_network
from asyncql_cli.checkpoint import load_checkpoint
from asyncql_cli.config.schema import NetworkConfig
from asyncql_cli.envs.make import EnvSpec
from asyncql_cli.evaluation.selection import Best, PolicySelection, SelectionSettings
from asyncql_cli.evaluation.video import gif_clip, record_video
from asyncql_cli.shm.counters import Counters
from asyncql_cli.shm.params import ParameterStore

IDLE_SECONDS = 0.02  # between looks at the clock while no evaluation is due


class EvaluationAborted(Exception):
    """The main process asked for an end in the middle of an evaluation."""


@dataclass(frozen=True)
class VideoSettings:
    episodes: int
    seed: int
    fps: Optional[float]
    interval_seconds: Optional[float]  # also a video every N seconds; None = only at the end
    directory: str  # <run dir>/videos


@dataclass(frozen=True)
class EvaluatorControl:
    stop: Any  # multiprocessing Events (threading Events in a serial run); stop is the child's stop event
    final_eval: Any
    end_video: Any
    abort: Any


@dataclass(frozen=True)
class EvaluatorSettings:
    selection: SelectionSettings
    env: EnvSpec
    network: NetworkConfig
    interval_seconds: float
    video: Optional[VideoSettings]
    heartbeat_slot: int


class Evaluator:
    IDLE_SECONDS = IDLE_SECONDS

    def __init__(self, settings: EvaluatorSettings, stores: list[ParameterStore], counters: Counters,
                 stats_queue: Any, best: Best, control: EvaluatorControl):
        self.settings, self.stores, self.counters, self.stats = settings, stores, counters, stats_queue
        self.control = control
        self.at_the_end = False  # the final evaluation and video run even though `stop` is set
        self.nets = [self._network() for _ in stores]
        self.selection = PolicySelection(settings.selection, best, self._on_step)
        self.last_eval = self.last_video = time.monotonic()

    def _network(self) -> nn.Module:
        net = build_network(self.settings.network, self.settings.env.obs_shape, self.settings.env.num_actions)
        net.requires_grad_(False)
        return net

    def _on_step(self, _episode: int, _env: Any) -> bool:
        self.counters.beat(self.settings.heartbeat_slot)
        if self.control.abort.is_set() or (self.control.stop.is_set() and not self.at_the_end):
            raise EvaluationAborted
        return True

    def evaluate_now(self) -> None:
        steps = self.counters.total_env_steps()
        candidates = []
        for index, (store, net) in enumerate(zip(self.stores, self.nets)):
            updates = store.read_into(net)
            if updates is not None:
                candidates.append((index, net, updates))
        report = self.selection.evaluate(candidates, steps)
        if report is not None:
            self.stats.put(("eval", report))

    def video_now(self, best: bool = False) -> None:
        """A video of the newest weights (videos/step_<N>.mp4), or of best.pt at the end
        (videos/best_step_<N>.mp4). A failure is reported, not fatal."""
        video, steps = self.settings.video, self.counters.total_env_steps()
        assert video is not None
        try:
            net, name = self.nets[0], f"step_{steps}"
            best_file = Path(self.settings.selection.best_file)
            if best and best_file.is_file():
                state = load_checkpoint(best_file)
                net = self._network()
                net.load_state_dict(state["q_net"])
                name = f"best_step_{state.get('env_steps')}"
            elif self.stores[0].read_into(net) is None:
                return  # nothing published yet
            out = Path(video.directory) / f"{name}.mp4"
            result = record_video(net, self.settings.env.env, video.episodes, video.seed, out, fps=video.fps,
                                  max_episode_steps=self.settings.selection.max_episode_steps)
            self.stats.put(("video", steps, gif_clip(result.frames, result.fps), str(result.path), result.returns))
        except EvaluationAborted:
            raise
        except Exception as exc:  # noqa: BLE001 - a video is an extra: say why there is none, go on
            self.stats.put(("warning", f"eval.video: no video at {steps} env steps ({type(exc).__name__}: {exc})"))

    # -- the process loop (workers.child) ---------------------------------------------------
    def work(self) -> bool:
        now = time.monotonic()
        try:
            if now - self.last_eval >= self.settings.interval_seconds:
                self.evaluate_now()
                self.last_eval = time.monotonic()
                return True
            video = self.settings.video
            if video is not None and video.interval_seconds and now - self.last_video >= video.interval_seconds:
                self.video_now()
                self.last_video = time.monotonic()
                return True
        except EvaluationAborted:
            pass
        return False

    def save(self) -> None:
        """best.pt is written as soon as a policy earns it."""

    def finish(self, main_alive: bool) -> None:
        if not main_alive:
            return
        self.at_the_end = True
        try:
            if self.control.final_eval.is_set():
                self.evaluate_now()  # the final weights may beat the last timed evaluation
            if self.settings.video is not None and self.control.end_video.is_set():
                self.video_now(best=True)
        except EvaluationAborted:
            pass

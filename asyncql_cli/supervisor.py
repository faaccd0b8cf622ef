"""The supervisor: checks input, wires the components, owns every process's lifetime.

`train(cfg, run_dir)` is the whole run, callable from tests without Hydra's wrapper.
The main process:
- validates the composed config, inspects the env and checks the replay fits in memory
  before any child starts (bad input -> BadInput -> one line, exit 2);
- allocates all shared memory (replay, parameter store, counters) and spawns the learner
  and the actors (`parallelism=local`), or runs the same components in-process
  (`parallelism=serial`);
- drains the stats queue into TensorBoard and the progress display, evaluates the
  published weights greedily on a timer (so the learner never stalls for evaluation),
  keeps `best.pt`, restarts crashed actors within a budget, stops on a crashed learner;
- stops on budget, time, solved, Ctrl-C or SIGTERM: sets the stop event, keeps draining
  while children join (a child with queued data cannot exit otherwise), kills whatever
  outlives the join timeout, and writes `summary.json`.
Shared tensors use torch's file-descriptor sharing (segments are unlinked at creation),
so nothing is left in /dev/shm once the processes are gone.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from asyncql_cli.actor import Actor, actor_main
from asyncql_cli.actor_learner import actor_learner_main
from asyncql_cli.builders import (
    Components,
    build_actor_learner_settings,
    build_actor_settings,
    build_learner_settings,
    check_memory,
    checkpoint_meta,
    connect_components,
    hogwild,
    storage_bytes,
)
from asyncql_cli.checkpoint import (
    check_compatible,
    load_checkpoint,
    load_replay_into,
    save_checkpoint,
    save_replay,
    write_json,
)
from asyncql_cli.config import BadInput, to_plain, validate
from asyncql_cli.envs import inspect_env
from asyncql_cli.evaluate import EvalResult, evaluate
from asyncql_cli.frame_replay import describe, human_bytes
from asyncql_cli.hogwild import load_into_shared
from asyncql_cli.learner import Learner, last_checkpoint_name, learner_main
from asyncql_cli.networks import build_network
from asyncql_cli.process_server import stop_process_server
from asyncql_cli.reporting import Reporter
from asyncql_cli.video import record_to_run

log = logging.getLogger("asyncql")

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
SUPERVISE_TICK_SECONDS = 0.05
SERIAL_ACTOR_STEPS_PER_TICK = 8
REPLAY_FILE = "replay.pt"


def _start_ignoring_sigint(proc: Any) -> None:
    """Start a child with SIGINT ignored from its first instruction: a terminal's Ctrl-C
    goes to the whole process group, and a child still importing modules would otherwise
    die with KeyboardInterrupt. Only the supervisor reacts to Ctrl-C."""
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.start()
    finally:
        signal.signal(signal.SIGINT, handler)


# ---------------------------------------------------------------------------- the run
class Run:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.plain = to_plain(cfg)
        self.run_dir = run_dir
        self.interrupts = 0
        self.error: Optional[str] = None
        self.exit_reason = "budget"
        self.best_eval: Optional[float] = None
        self.best_lower: Optional[float] = None  # best.pt's confirmed mean minus eval.confirm_margin s.e.
        self.best_env_steps: Optional[int] = None
        self.best_wall_seconds: Optional[float] = None  # wall clock of this run to its best eval
        self.solved_at: Optional[tuple[int, float]] = None  # (env steps, wall s) of the first solved eval
        self.generation = 0
        self.previous_wall = 0.0

    # -- signals ---------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            log.warning("%s received: stopping cleanly (again to force)", signal.Signals(signum).name)
        else:
            log.warning("second interrupt: forcing exit")

    # -- processes -------------------------------------------------------------------
    def _start(self, c: Components, role: str, target: Any, components: tuple, extra: tuple) -> None:
        """Every entry point takes (its components..., stats, stop, main pid, threads, extra...)."""
        wiring = (c.stats, c.stop, os.getpid(), self.plain["parallelism"]["torch_threads"])
        proc = c.ctx.Process(target=target, name=f"asyncql:{role}", daemon=True,
                             args=(*components, *wiring, *extra))
        _start_ignoring_sigint(proc)
        c.processes[role] = proc
        log.info("%s started (pid %d)", role, proc.pid)

    def _spawn_actor(self, c: Components, actor_id: int) -> None:
        """An actor (replay mode) or an actor-learner; a restart continues its counters."""
        start = int(c.counters.env_steps[actor_id])
        c.counters.heartbeat[actor_id] = 0.0  # not watched until the new process beats
        if self.actor_learner:
            settings = build_actor_learner_settings(self.plain, self.spec, self.run_dir, actor_id, self.generation)
            updates = int(c.counters.learner_updates[actor_id])
            self._start(c, f"actor-learner-{actor_id}", actor_learner_main,
                        (settings, c.shared, c.params, c.counters), (start, updates))
        else:
            settings = build_actor_settings(self.plain, self.spec, actor_id, self.generation)
            self._start(c, f"actor-{actor_id}", actor_main,
                        (settings, c.storage, c.store_for_actor(actor_id), c.counters), (start,))

    def _spawn_learner(self, c: Components, index: int, resume_state: Optional[dict]) -> None:
        settings = build_learner_settings(self.plain, self.spec, self.run_dir, self.generation, index)
        store = c.params if c.shared is not None else c.stores[index]
        self._start(c, f"learner-{index}", learner_main,
                    (settings, c.storage, store, c.counters), (resume_state, c.shared))
        log.info("learner-%d device: %s", index, "cpu (shared, Hogwild)" if c.shared else settings.device)

    def _kill_hung(self, c: Components) -> None:
        """A child whose heartbeat stopped (an env stuck in step(), a deadlock) is killed;
        the exit check below then restarts it or stops the run."""
        timeout = self.plain["parallelism"]["heartbeat_timeout_seconds"]
        now = time.time()
        for role, proc in c.processes.items():
            index = int(role.rsplit("-", 1)[1])
            slot = c.counters.learner_slot(index) if role.startswith("learner") else index
            beat = float(c.counters.heartbeat[slot])
            if proc.exitcode is None and beat > 0 and now - beat > timeout:
                self.child_errors[role] = f"no heartbeat for {now - beat:.0f} s (hung); killed"
                proc.kill()
                proc.join(timeout=2.0)

    def _check_children(self, c: Components) -> None:
        self._kill_hung(c)
        for role, proc in list(c.processes.items()):
            if proc.exitcode is None:
                continue
            self._drain(c)  # the child's last words (its error) arrive before its exit
            cause = self.child_errors.pop(role, None) or _describe_exit(proc.exitcode)
            if role.startswith("learner"):
                self.error = f"{role} crashed: {cause}"
                return
            budget = self.plain["parallelism"]["max_actor_restarts"]
            if c.restarts >= budget:
                self.error = f"{role} crashed and the restart budget ({budget}) is spent: {cause}"
                return
            c.restarts += 1
            log.error("%s died (%s); restarting (%d/%d)", role, cause, c.restarts, budget)
            self._spawn_actor(c, int(role.rsplit("-", 1)[1]))

    def _shutdown(self, c: Components) -> None:
        c.stop.set()
        deadline = time.monotonic() + self.plain["parallelism"]["join_timeout_seconds"]
        while any(p.is_alive() for p in c.processes.values()):
            self._drain(c)
            if time.monotonic() > deadline or self.interrupts >= 2:
                break
            time.sleep(0.02)
        for role, proc in c.processes.items():
            if proc.is_alive():
                log.warning("%s did not stop in time; killing it", role)
                proc.kill()
            proc.join(timeout=2.0)
        self._drain(c)
        if hasattr(c.stats, "close"):
            c.stats.close()
            c.stats.join_thread()
        if not any(p.is_alive() for p in c.processes.values()):
            stop_process_server()

    # -- stats -----------------------------------------------------------------------
    def _drain(self, c: Components) -> None:
        while True:
            try:
                message = c.stats.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            kind = message[0]
            steps = c.counters.total_env_steps()
            if kind == "episode":
                _, _, ret, length, eps = message
                self.reporter.episode(ret, length, eps, steps)
            elif kind == "learner":
                _, index, means, updates, skipped = message
                several = self.num_updaters > 1
                for name, value in means.items():
                    self.reporter.scalar(f"learner/{name}", value, steps)
                    if several:
                        self.reporter.scalar(f"learner{index}/{name}", value, steps)
                if skipped:
                    self.reporter.scalar("learner/skipped_updates", skipped, steps)
            elif kind == "error":
                _, role, reason, text = message
                self.child_errors[role] = reason
                log.error("%s failed: %s\n%s", role, reason, text)

    # -- evaluation ------------------------------------------------------------------
    def _greedy(self, net: torch.nn.Module, episodes: int, seed: int) -> EvalResult:
        env, ev = self.plain["env"], self.plain["eval"]
        return evaluate(net, self.spec.env_id, env["kwargs"], ev["max_episode_steps"] or env["max_episode_steps"],
                        episodes, seed, atari=env.get("atari"))

    def _confirm_threshold(self) -> Optional[float]:
        """The lowest return that would count (stop or solved): evaluations reaching it are confirmed."""
        limits = [v for v in (self.plain["train"]["stop_at_return"], self.plain["env"]["solved_return"])
                  if v is not None]
        return min(limits) if limits else None

    def _stop_reached(self) -> bool:
        """train.stop_at_return is reached by best.pt itself, with eval.confirm_margin to spare."""
        target = self.plain["train"]["stop_at_return"]
        return target is not None and self.best_lower is not None and self.best_lower >= target

    def _evaluate(self, c: Components, steps: int) -> Optional[float]:
        """Greedy evaluation of every published network (one per independent learner);
        the best one is the run's score and, if it beats the record, becomes best.pt."""
        env, ev = self.plain["env"], self.plain["eval"]
        scores = []
        for index, (store, net) in enumerate(zip(c.stores, self.eval_nets)):
            published = store.read_into(net)
            if published is None:
                continue
            result = self._greedy(net, ev["episodes"], ev["seed"])
            if len(c.stores) > 1:
                self.reporter.scalar(f"learner{index}/eval_mean_return", result.mean, steps)
            scores.append((result.mean, -index, published, result))
        if not scores:
            return None
        mean, negative_index, updates, result = max(scores, key=lambda score: score[:3])
        best_index = -negative_index
        self.eval_net = self.eval_nets[best_index]
        self.reporter.scalar("eval/mean_return", mean, steps)
        episodes, seed = ev["episodes"], ev["seed"]
        log.info("eval at %d env steps (%d updates): mean return %.1f over %d episodes",
                 steps, updates, mean, episodes)
        solved_return = env["solved_return"]
        threshold = self._confirm_threshold()
        if (ev["confirm_episodes"] and threshold is not None and mean >= threshold
                and (self.best_eval is None or mean > self.best_eval)):
            # confirm on fresh episodes before it counts, only when it could become the best (a
            # solved policy is not re-checked every interval), and each time on episodes of its
            # own (seeds after the periodic ones, a new range per env-step count): re-testing
            # policy after policy on the same episodes would stop on the first that suits them
            episodes = ev["confirm_episodes"]
            seed = ev["seed"] + ev["episodes"] + steps * episodes
            result = self._greedy(self.eval_net, episodes, seed)
            mean, lower = result.mean, result.lower_bound(ev["confirm_margin"])
            self.reporter.scalar("eval/confirmed_mean_return", mean, steps)
            self.reporter.scalar("eval/confirmed_lower_bound", lower, steps)
            log.info("confirmation at %d env steps: mean return %.1f over %d episodes (lower bound %.1f)",
                     steps, mean, episodes, lower)
        self.reporter.eval_return = mean
        wall = time.monotonic() - self.reporter.start
        if self.solved_at is None and solved_return is not None and mean >= solved_return:
            self.solved_at = (steps, wall)
        if self.best_eval is None or mean > self.best_eval:
            self.best_eval = mean
            self.best_lower = result.lower_bound(ev["confirm_margin"])
            self.best_env_steps = steps
            self.best_wall_seconds = wall
            self.reporter.best_eval = mean
            state = {**checkpoint_meta(self.plain, self.spec),
                     "q_net": {k: v.clone() for k, v in self.eval_net.state_dict().items()},
                     "updates": updates, "env_steps": steps, "eval_return": mean,
                     "learner_index": best_index, "eval_lower_bound": self.best_lower,
                     "eval_episodes": episodes, "eval_seed": seed}
            save_checkpoint(self.run_dir / "checkpoints" / "best.pt", state)
        return mean

    def _record_video(self, c: Components, steps: int, best: bool = False) -> None:
        """eval.video: greedy episodes of the published weights as videos/step_<steps>.mp4, or
        at the end of the best weights as videos/best_step_<N>.mp4 (N: best.pt's env steps),
        and the clip as eval/video in the run's writer. A failure is logged, not fatal."""
        net, name = self.eval_net, f"step_{steps}"
        try:
            best_file = self.run_dir / "checkpoints" / "best.pt"
            if best and best_file.is_file():
                state = load_checkpoint(best_file)
                net = build_network(self.plain["network"], self.spec.obs_shape, self.spec.num_actions)
                net.load_state_dict(state["q_net"])
                name = f"best_step_{state.get('env_steps')}"
            elif c.params.read_into(self.eval_net) is None:
                return  # no weights published yet
            result = record_to_run(net, self.plain, self.run_dir / "videos" / f"{name}.mp4", steps,
                                   self.reporter.writer)
            log.info("video of %d greedy episodes (returns %s) written to %s", len(result.returns),
                     ", ".join(f"{r:.1f}" for r in result.returns), result.path)
        except Exception as exc:
            log.warning("eval.video: no video at %d env steps (%s: %s)", steps, type(exc).__name__, exc)

    # -- main loop -------------------------------------------------------------------
    def execute(self) -> int:
        plain = self.plain
        env = plain["env"]
        self.spec = inspect_env(env["id"], env["kwargs"], env["max_episode_steps"], atari=env.get("atari"),
                                network_name=plain["network"]["name"])
        if plain["buffer"]["name"] != "none":
            check_memory(storage_bytes(plain, self.spec))
        try:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"run directory {self.run_dir} is not writable ({exc.strerror})") from None
        if not os.access(self.run_dir, os.W_OK):
            raise BadInput(f"run directory {self.run_dir} is not writable")
        serial = plain["parallelism"]["name"] == "serial"
        p = plain["parallelism"]
        self.actor_learner = plain["algo"]["mode"] == "actor_learner"
        self.num_learners = 0 if self.actor_learner else p["num_learners"]
        self.num_updaters = p["num_actors"] if self.actor_learner else p["num_learners"]
        self.child_errors: dict[str, str] = {}
        torch.set_num_threads(p["torch_threads"])
        c = connect_components(plain, self.spec, serial)
        self.eval_nets = [build_network(plain["network"], self.spec.obs_shape, self.spec.num_actions)
                          for _ in c.stores]
        self.eval_net = self.eval_nets[0]
        resume_states = self._restore(c) if plain["resume"] else [None] * max(1, self.num_learners)
        self.reporter = Reporter(str(self.run_dir), plain["train"]["total_env_steps"],
                                 plain["train"]["progress"],
                                 purge_step=c.counters.total_env_steps() if plain["resume"] else None)
        self.reporter.best_eval = self.best_eval
        log.info("run dir %s (main pid %d)", self.run_dir, os.getpid())
        if c.storage is not None:
            log.info("%s (%s of shared memory)", describe(c.storage), human_bytes(storage_bytes(plain, self.spec)))
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        start = time.monotonic()
        try:
            if serial:
                self._run_serial(c, start, resume_states[0])
            else:
                for index in range(self.num_learners):
                    self._spawn_learner(c, index, resume_states[index])
                for actor_id in range(plain["parallelism"]["num_actors"]):
                    self._spawn_actor(c, actor_id)
                self._loop(c, start, step=lambda: time.sleep(SUPERVISE_TICK_SECONDS))
        finally:
            if not serial:
                self._shutdown(c)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._finish(c, start)

    def _load_compatible(self, path: Path) -> dict[str, Any]:
        state = load_checkpoint(path)
        check_compatible(state, path, self.spec.env_id, self.spec.obs_shape, self.spec.num_actions,
                         self.plain["network"])
        return state

    def _restore(self, c: Components) -> list[Optional[dict[str, Any]]]:
        """Continue a run: learner states from last.pt (and last.learner<k>.pt for independent
        learners), counters, best score, replay. Returns one state per learner process."""
        checkpoints = self.run_dir / "checkpoints"
        state = self._load_compatible(checkpoints / "last.pt")
        c.counters.env_steps_offset[0] = int(state["env_steps"])
        saved_counts = list(state.get("learner_updates", [state["updates"]]))
        if len(saved_counts) == c.counters.learner_updates.numel():
            c.counters.learner_updates.copy_(torch.tensor(saved_counts))
        else:  # the number of learners changed: keep the total on the primary
            c.counters.learner_updates[0] = int(state["updates"])
        if c.shared is not None:
            load_into_shared(c.shared, state)
        states: list[Optional[dict[str, Any]]] = [state]
        for index in range(1, self.num_learners):
            path = checkpoints / last_checkpoint_name(index)
            states.append(state if c.shared is not None else self._load_compatible(path))
        self.generation = int(state.get("generation", 0)) + 1
        self.previous_wall = _previous_wall_seconds(self.run_dir / "summary.json")
        if (checkpoints / "best.pt").is_file():
            best = load_checkpoint(checkpoints / "best.pt")
            self.best_eval = best.get("eval_return")
            self.best_lower = best.get("eval_lower_bound")
            self.best_env_steps = best.get("env_steps")
        replay_file = checkpoints / REPLAY_FILE
        restored = load_replay_into(c.storage, replay_file) if replay_file.is_file() and c.storage else 0
        log.info("resuming at %d env steps, %d updates (generation %d), %d replay rows restored",
                 state["env_steps"], state["updates"], self.generation, restored)
        return states

    def _run_serial(self, c: Components, start: float, resume_state: Optional[dict] = None) -> None:
        """The same components, stepped in turn in this process (debugging, fast tests)."""
        n = self.plain["parallelism"]["num_actors"]
        actors = [Actor(build_actor_settings(self.plain, self.spec, i, self.generation), c.storage, c.params,
                        c.counters, c.stats) for i in range(n)]
        settings = build_learner_settings(self.plain, self.spec, self.run_dir, self.generation)
        learner = Learner(settings, c.storage, c.params, c.counters, c.stats)
        if resume_state is not None:
            learner.load_state(resume_state)
        learner.publish()
        self.serial_learner = learner

        def step() -> None:
            for _ in range(SERIAL_ACTOR_STEPS_PER_TICK):
                for actor in actors:
                    actor.step()
            while learner.data_allows_update() and learner.update():
                pass

        try:
            self._loop(c, start, step)
        finally:
            learner.flush_stats()
            learner.save_last()
            for actor in actors:
                actor.close()

    def _loop(self, c: Components, start: float, step: Any) -> None:
        t, ev = self.plain["train"], self.plain["eval"]
        last_log = last_eval = last_video = time.monotonic()
        last_steps, last_updates = c.counters.total_env_steps(), c.counters.updates()
        while True:
            step()
            self._drain(c)
            now = time.monotonic()
            steps, updates = c.counters.total_env_steps(), c.counters.updates()
            if now - last_log >= t["log_interval_seconds"]:
                self._log_perf(c, steps, updates, steps - last_steps, updates - last_updates, now - last_log)
                last_log, last_steps, last_updates = now, steps, updates
            self.reporter.progress(steps, updates, c.replay_size())
            if now - last_eval >= ev["interval_seconds"]:
                self._evaluate(c, steps)
                last_eval = time.monotonic()
                if self._stop_reached():
                    self.exit_reason = "solved"
                    return
            if ev["video"] and ev["video_interval_seconds"] and now - last_video >= ev["video_interval_seconds"]:
                self._record_video(c, steps)
                last_video = time.monotonic()
            if self.interrupts:
                self.exit_reason = "interrupted"
                return
            if not self.serial_mode:
                self._check_children(c)
            if self.error is not None:
                self.exit_reason = "error"
                return
            if steps >= t["total_env_steps"]:
                self.exit_reason = "budget"
                return
            if t["max_seconds"] is not None and now - start >= t["max_seconds"]:
                self.exit_reason = "max_seconds"
                return

    @property
    def serial_mode(self) -> bool:
        return self.plain["parallelism"]["name"] == "serial"

    def _log_perf(self, c: Components, steps: int, updates: int, d_steps: int, d_updates: int,
                  seconds: float) -> None:
        self.reporter.env_steps_per_sec = d_steps / seconds
        self.reporter.updates_per_sec = d_updates / seconds
        self.reporter.scalar("perf/env_steps_per_sec", d_steps / seconds, steps)
        self.reporter.scalar("perf/updates_per_sec", d_updates / seconds, steps)
        self.reporter.scalar("replay/size", c.replay_size(), steps)
        self.reporter.scalar("actor/policy_lag", self._policy_lag(c), steps)

    def _policy_lag(self, c: Components) -> float:
        """Mean over actors of (updates of the network it follows) - (updates of its weights)."""
        counters = c.counters
        if hogwild(self.plain):
            followed = torch.full_like(counters.actor_updates, counters.updates())
        else:
            followed = counters.learner_updates[torch.arange(counters.num_actors) % len(c.stores)]
        return float((followed - counters.actor_updates).float().mean())

    # -- end -------------------------------------------------------------------------
    def _finish(self, c: Components, start: float) -> int:
        wall = time.monotonic() - start
        steps, updates = c.counters.total_env_steps(), c.counters.updates()
        if self.error is None and self.interrupts < 2 and self.exit_reason not in ("interrupted", "solved"):
            self._evaluate(c, steps)  # the final weights may beat the last timed evaluation
            if self.plain["eval"]["video"]:
                self._record_video(c, steps, best=True)
        solved_return = self.plain["env"]["solved_return"]
        solved = bool(self.best_eval is not None and solved_return is not None
                      and self.best_eval >= solved_return)
        if self.plain["checkpoint"]["save_replay"] and self.interrupts < 2 and c.storage is not None:
            rows = save_replay(c.storage, self.run_dir / "checkpoints" / REPLAY_FILE)
            log.info("saved %d replay rows to checkpoints/%s", rows, REPLAY_FILE)
        summary = {
            "env_id": self.spec.env_id, "env_steps": steps, "updates": updates,
            "wall_seconds": wall, "total_wall_seconds": self.previous_wall + wall,
            "generation": self.generation, "env_steps_per_sec": steps / wall if wall > 0 else 0.0,
            "updates_per_sec": updates / wall if wall > 0 else 0.0,
            "best_eval_return": self.best_eval, "best_eval_env_steps": self.best_env_steps,
            "best_eval_wall_seconds": self.best_wall_seconds,
            "solved_env_steps": self.solved_at[0] if self.solved_at else None,
            "solved_wall_seconds": self.solved_at[1] if self.solved_at else None,
            "solved": solved, "exit_reason": self.exit_reason, "error": self.error,
            "actor_restarts": c.restarts, "run_dir": str(self.run_dir),
        }
        write_json(self.run_dir / "summary.json", summary)
        metrics = {"hparams/best_eval_return": self.best_eval if self.best_eval is not None else float("nan"),
                   "hparams/env_steps_per_sec": summary["env_steps_per_sec"],
                   # time to solve (NaN when not solved): the first greedy eval >= env.solved_return
                   "hparams/solved_wall_seconds": self.solved_at[1] if self.solved_at else float("nan"),
                   "hparams/solved_env_steps": self.solved_at[0] if self.solved_at else float("nan")}
        self.reporter.write_hparams(flat_hparams(self.plain), metrics, steps)
        self.reporter.close()
        self.reporter.final_table(summary)
        if self.error is not None:
            log.error("run failed: %s", self.error)
            return EXIT_ERROR
        return EXIT_INTERRUPTED if self.exit_reason == "interrupted" else EXIT_OK


def _describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


def _previous_wall_seconds(summary_file: Path) -> float:
    try:
        summary = json.loads(summary_file.read_text())
        return float(summary.get("total_wall_seconds", summary.get("wall_seconds", 0.0)))
    except (OSError, ValueError, TypeError):
        return 0.0


def flat_hparams(plain: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten the config to TensorBoard-hparams-compatible scalars and strings."""
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


def train(cfg: DictConfig, run_dir: str | Path) -> int:
    """Validate, run, and return the exit code. Raises BadInput for user errors."""
    validate(cfg)
    return Run(cfg, Path(run_dir)).execute()


__all__ = ["train", "BadInput", "EXIT_OK", "EXIT_ERROR", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED",
           "load_checkpoint", "check_compatible"]

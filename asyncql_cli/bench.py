"""`asyncql bench`: throughput of each pipeline component against a bare baseline.

    asyncql bench [--env ID] [--seconds S] [--envs-per-actor N] [--actors 1,2]
                  [--network mlp|nature_cnn] [--batch-size B] [--hidden 256,256]
                  [--capacity ROWS] [--device auto|cpu|cuda] [--amp off|bf16|fp16]
                  [--[no-]compile] [--[no-]prefetch] [--only env,actor,replay,learner] [--json PATH]

The learner on a GPU (issue 8's goal: `Learner.update` at >= 90% of the updates/s of a bare
loop of the same network and batch; the `ratio` column of `learner.update` says it):

    asyncql bench --env Pong --only learner --seconds 10               # Nature CNN, batch 32
    asyncql bench --env Pong --only learner --seconds 10 --amp bf16 --compile
    asyncql bench --only learner --seconds 10                          # the mlp, batch 128

`--env Pong` (any Atari env file) selects network=nature_cnn: the replay is the frame replay
filled with random uint8 frames of the Atari shape (4x84x84); the env is only inspected.
Per network, unset flags default to: mlp batch 128, hidden 256,256, the config's replay
capacity; nature_cnn batch 32, hidden 512, at most 100,000 rows. `--amp` and `--compile`
apply to both sides of the learner ratio; `--prefetch` (the learner's) to one.

Every number comes from one run, so the ratios compare measurements taken on the same
(possibly noisy) machine minutes apart at most:

- env:     a raw gymnasium loop (the same vector env the actors use, random actions);
- actor:   one `Actor` stepping in this process (with published weights, so it runs the
           Q-network), then N `actor_main` processes for each N of `--actors`, both as
           env steps/s and as a ratio to the raw loop;
- replay:  `ReplayStorage.write` rows/s and `UniformSampler.sample` batches/s on a full ring;
- learner: `Learner.update` updates/s on a full replay against a bare torch loop (same
           network, batch size, Adam, double-DQN Huber target, amp and compile, tensors
           already in the device's memory), on the learner device (cuda when available).

The components are built from the composed Hydra config with the same builders training
uses (`build_actor_settings`, `build_learner_settings`, `connect_components`). This is a
tool, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import queue
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NoReturn, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from asyncql_cli.actor import Actor, actor_main
from asyncql_cli.builders import (
    Components,
    build_actor_settings,
    build_learner_settings,
    connect_components,
)
from asyncql_cli.checkpoint import write_json
from asyncql_cli.config import BadInput, to_plain, validate
from asyncql_cli.envs import EnvSpec, inspect_env, make_vector_env
from asyncql_cli.frame_replay import FrameStorage
from asyncql_cli.learner import Learner, autocast, compile_forwards, grad_scaler, resolve_device
from asyncql_cli.networks import build_network
from asyncql_cli.process_server import stop_process_server
from asyncql_cli.replay import UniformSampler

PARTS = ("env", "actor", "replay", "learner")
STARTUP_TIMEOUT_SECONDS = 120.0  # spawned actors import torch and gymnasium first
POLL_SECONDS = 0.05
RAW_ENV = "env.raw_gymnasium"
BARE_TORCH = "learner.bare_torch"
ACTOR = "actor.in_process"
LEARNER = "learner.update"
ROUNDS = 5  # alternating slices per in-process pair (see measure)
REPORT_WIDTH = 150


@dataclass(frozen=True)
class NetworkDefaults:
    """What the bench measures a network with when the flags leave it open."""

    batch_size: int
    hidden: tuple[int, ...]
    max_capacity: Optional[int]  # cap on the config's buffer.capacity (None: the config's)


NETWORK_DEFAULTS = {
    "mlp": NetworkDefaults(batch_size=128, hidden=(256, 256), max_capacity=None),
    # Nature DQN's batch and layer; 100k frames (~0.7 GB) already defeat every CPU cache, as
    # the 1M of training do, without filling gigabytes first
    "nature_cnn": NetworkDefaults(batch_size=32, hidden=(512,), max_capacity=100_000),
}


@dataclass
class Result:
    """One measurement; `ratio` is value / the value of the measurement named `baseline`."""

    name: str
    value: float
    unit: str
    baseline: Optional[str] = None
    ratio: Optional[float] = None
    note: str = ""


# ----------------------------------------------------------------------------- arguments
class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as BadInput (one line, exit 2) instead of usage."""

    def error(self, message: str) -> NoReturn:
        raise BadInput(f"bench: {message} (see asyncql bench --help)")


def _positive_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise BadInput(f"bench: {flag} {text!r}: expected a comma list of integers > 0, e.g. 1,2") from None
    if not values or any(v <= 0 for v in values):
        raise BadInput(f"bench: {flag} {text!r}: expected a comma list of integers > 0, e.g. 1,2")
    return values


def _parts(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if not parts or unknown:
        raise BadInput(f"bench: --only {text!r}: expected a comma list of {', '.join(PARTS)}")
    return [part for part in PARTS if part in parts]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="asyncql bench", description="Throughput of actors, replay and learner "
                     "against a raw gymnasium loop and a bare torch loop.")
    parser.add_argument("--env", default="CartPole-v1", help="conf/env name or gymnasium id (default CartPole-v1)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement (default 3)")
    parser.add_argument("--envs-per-actor", type=int, default=8, help="envs per vector env (default 8)")
    parser.add_argument("--actors", default="1,2", help="actor process counts to measure (default 1,2)")
    parser.add_argument("--network", choices=tuple(NETWORK_DEFAULTS), default=None,
                        help="Q-network (default: the env config's; Atari envs select nature_cnn)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sample/update batch size (default 128 for mlp, 32 for nature_cnn)")
    parser.add_argument("--hidden", default=None,
                        help="Q-network hidden sizes (default 256,256 for mlp, 512 for nature_cnn)")
    parser.add_argument("--capacity", type=int, default=None,
                        help="replay rows (default the config's buffer.capacity, at most 100000 for nature_cnn)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="learner device")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default=None,
                        help="learner and bare loop mixed precision (default: the config's algo.amp)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the Q-network of learner and bare loop (default: algo.compile)")
    parser.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                        help="the learner draws batch k+1 during update k (default: algo.prefetch)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"subset of {','.join(PARTS)} (default all)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise BadInput(f"bench: --seconds {args.seconds}: expected a number > 0")
    if args.envs_per_actor <= 0:
        raise BadInput(f"bench: --envs-per-actor {args.envs_per_actor}: expected an integer > 0")
    for flag, value in (("--batch-size", args.batch_size), ("--capacity", args.capacity)):
        if value is not None and value <= 0:
            raise BadInput(f"bench: {flag} {value}: expected an integer > 0")
    args.actors = sorted(set(_positive_ints(args.actors, "--actors")))
    if args.hidden is not None:
        args.hidden = _positive_ints(args.hidden, "--hidden")
    args.only = _parts(args.only)
    if args.json is not None:
        check_writable(args.json)
    return args


def check_writable(path: Path) -> None:
    """Refuse an unwritable --json before spending minutes measuring."""
    if path.is_dir():
        raise BadInput(f"bench: --json {path} is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"bench: --json {path}: cannot create {path.parent} ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise BadInput(f"bench: --json {path}: {path.parent} is not writable")


# -------------------------------------------------------------------------------- config
def compose_config(args: argparse.Namespace) -> tuple[dict[str, Any], EnvSpec]:
    """The training config (conf/ composed by Hydra) with the bench's choices applied,
    validated like `asyncql train` validates it, as plain data plus the env's spec. Flags
    left unset get their network's `NETWORK_DEFAULTS` (written back into `args`)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from asyncql_cli.cli import _register_resolvers, config_dir
    from asyncql_cli.config import register_configs

    register_configs()
    _register_resolvers()
    conf = config_dir()
    named = args.env != "gym" and (Path(conf) / "env" / f"{args.env}.yaml").is_file()
    try:
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            overrides = [f"env={args.env}" if named else "env=gym"]
            if args.network is not None:
                overrides.append(f"network={args.network}")
            cfg = compose(config_name="config", overrides=overrides)
        if not named:
            cfg.env.id = args.env
        args.network = cfg.network.name
        defaults = NETWORK_DEFAULTS.get(args.network, NETWORK_DEFAULTS["mlp"])  # unknown: validate() says so
        args.batch_size = args.batch_size or defaults.batch_size
        args.hidden = args.hidden or list(defaults.hidden)
        if args.capacity is None:
            args.capacity = min(cfg.buffer.capacity, defaults.max_capacity or cfg.buffer.capacity)
        cfg.parallelism.envs_per_actor = args.envs_per_actor
        cfg.parallelism.learner_device = args.device
        cfg.network.hidden = args.hidden
        cfg.algo.batch_size = args.batch_size
        cfg.buffer.capacity = args.capacity
        # nothing waits for learning_starts here (the replay is filled up front); only keep it valid
        cfg.train.learning_starts = min(cfg.train.learning_starts, args.capacity)
        for key in ("amp", "compile", "prefetch"):
            if getattr(args, key) is not None:
                cfg.algo[key] = getattr(args, key)
        args.amp, args.compile, args.prefetch = cfg.algo.amp, cfg.algo.compile, cfg.algo.prefetch
        cfg.actor.max_update_debt = None  # no learner runs beside the actors: never throttle
    except (HydraException, OmegaConfBaseException) as exc:
        raise BadInput(f"bench: config: {' '.join(str(exc).split())}") from None
    validate(cfg)
    for count in args.actors:  # the replay must split into `count` segments
        scaled = copy.deepcopy(cfg)
        scaled.parallelism.num_actors = count
        validate(scaled)
    plain = to_plain(cfg)
    env = plain["env"]
    return plain, inspect_env(env["id"], env["kwargs"], env["max_episode_steps"], atari=env.get("atari"),
                              network_name=plain["network"]["name"])


def with_actors(plain: dict[str, Any], count: int) -> dict[str, Any]:
    scaled = copy.deepcopy(plain)
    scaled["parallelism"]["num_actors"] = count
    return scaled


# --------------------------------------------------------------------------- measuring
Step = Callable[[], int]  # does some work, returns how many units (env steps, rows, ...) it did


def warmup_seconds(seconds: float) -> float:
    return min(1.0, max(0.1, 0.2 * seconds))


def _no_sync() -> None:
    return None


def _run_for(step: Step, seconds: float, sync: Callable[[], None]) -> tuple[int, float]:
    done = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        done += step()
    sync()
    return done, time.perf_counter() - start


def measure(steps: dict[str, Step], seconds: float, sync: Callable[[], None] = _no_sync) -> dict[str, float]:
    """Units per second of each step over `seconds` of its own, after a warm-up. With several
    steps the windows alternate in ROUNDS slices, so a load spike from other work on a
    shared machine hits both sides of a ratio. `sync` waits for queued device work."""
    for step in steps.values():
        _run_for(step, warmup_seconds(seconds), sync)
    done, spent = dict.fromkeys(steps, 0), dict.fromkeys(steps, 0.0)
    rounds = ROUNDS if len(steps) > 1 else 1
    for _ in range(rounds):
        for name, step in steps.items():
            units, elapsed = _run_for(step, seconds / rounds, sync)
            done[name] += units
            spent[name] += elapsed
    return {name: done[name] / spent[name] for name in steps}


def device_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return _no_sync


def publish_random_weights(plain: dict[str, Any], spec: EnvSpec, c: Components) -> None:
    """Give actors weights to read, so they run the Q-network instead of acting uniformly."""
    net = build_network(plain["network"], spec.obs_shape, spec.num_actions)
    c.params.publish(net, 1)


def random_obs(count: int, spec: EnvSpec) -> torch.Tensor:
    """Noise observations of the env's shape and dtype (uint8 frames: every byte value)."""
    if spec.obs_dtype == "uint8":
        return torch.randint(0, 256, (count, *spec.obs_shape), dtype=torch.uint8)
    return torch.randn(count, *spec.obs_shape)


def random_rows(count: int, plain: dict[str, Any], spec: EnvSpec) -> dict[str, torch.Tensor]:
    """Transitions shaped like the actors' (values are noise: only the sizes matter here)."""
    a = plain["algo"]
    discount = torch.full((count,), a["gamma"] ** a["n_step"])
    discount[torch.rand(count) < 0.05] = 0.0
    return {
        "obs": random_obs(count, spec),
        "action": torch.randint(spec.num_actions, (count,)),
        "reward": torch.randn(count),
        "next_obs": random_obs(count, spec),
        "discount": discount,
    }


def random_frame_rows(count: int, plain: dict[str, Any], spec: EnvSpec) -> dict[str, torch.Tensor]:
    """`FrameStorage` rows of one episode of random frames, each starting an n-step transition."""
    a = plain["algo"]
    return {
        "frame": torch.randint(0, 256, (count, *spec.obs_shape[1:]), dtype=torch.uint8),
        "action": torch.randint(spec.num_actions, (count,)),
        "reward": torch.randn(count),
        "discount": torch.full((count,), a["gamma"] ** a["n_step"]),
        "bootstrap": torch.full((count,), a["n_step"], dtype=torch.int64),
        "episode_step": torch.arange(count, dtype=torch.int32),
    }


def storage_rows(storage: Any, count: int, plain: dict[str, Any], spec: EnvSpec) -> dict[str, torch.Tensor]:
    """Rows in the layout `storage` writes (transitions, or single frames for the frame replay)."""
    rows = random_frame_rows if isinstance(storage, FrameStorage) else random_rows
    return rows(count, plain, spec)


def filled_components(plain: dict[str, Any], spec: EnvSpec) -> Components:
    """In-process components (as `parallelism=serial` wires them) with every segment full."""
    c = connect_components(plain, spec, serial=True)
    for segment in range(c.storage.num_segments):
        c.storage.write(segment, storage_rows(c.storage, c.storage.segment_size, plain, spec))
    return c


# ------------------------------------------------------------------- env and actors
@contextmanager
def raw_env_step(plain: dict[str, Any], spec: EnvSpec) -> Iterator[Step]:
    """The baseline: the actors' vector env stepped with random actions and nothing else."""
    n, env = plain["parallelism"]["envs_per_actor"], plain["env"]
    envs = make_vector_env(spec.env_id, n, env["kwargs"], env["max_episode_steps"], atari=env.get("atari"),
                           training=True)
    rng = np.random.default_rng(plain["seed"])
    try:
        envs.reset(seed=plain["seed"])

        def step() -> int:
            envs.step(rng.integers(spec.num_actions, size=n))
            return n

        yield step
    finally:
        envs.close()


@contextmanager
def actor_step(plain: dict[str, Any], spec: EnvSpec) -> Iterator[Step]:
    """One `Actor` as training builds it (serial wiring), acting with published weights."""
    one = with_actors(plain, 1)
    c = connect_components(one, spec, serial=True)
    publish_random_weights(one, spec, c)
    actor = Actor(build_actor_settings(one, spec, 0), c.storage, c.params, c.counters, c.stats)
    try:

        def step() -> int:
            actor.step()
            return actor.s.envs_per_actor

        yield step
    finally:
        actor.close()


def bench_env_and_actor(parts: list[str], plain: dict[str, Any], spec: EnvSpec, seconds: float) -> list[Result]:
    n = plain["parallelism"]["envs_per_actor"]
    with ExitStack() as stack:
        steps: dict[str, Step] = {}
        if "env" in parts:
            steps[RAW_ENV] = stack.enter_context(raw_env_step(plain, spec))
        if "actor" in parts:
            steps[ACTOR] = stack.enter_context(actor_step(plain, spec))
        rates = measure(steps, seconds)
    results = []
    if RAW_ENV in rates:
        results.append(Result(RAW_ENV, rates[RAW_ENV], "env steps/s", note=f"SyncVectorEnv x{n}, random actions"))
    if ACTOR in rates:
        results.append(Result(ACTOR, rates[ACTOR], "env steps/s", RAW_ENV,
                              note="Actor.step: eps-greedy Q-net forward, n-step, replay writes"))
    return results


def _drain(stats: Any) -> list[str]:
    """Empty the children's stats queue (a child with queued data cannot exit); return errors."""
    errors = []
    while True:
        try:
            message = stats.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return errors
        if message[0] == "error":
            errors.append(f"{message[1]}: {message[2].strip().splitlines()[-1]}")


def _watch(c: Components, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
    """Keep draining for `seconds` (or until `until()`); raise if an actor failed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        errors = _drain(c.stats)
        dead = [f"{role} (exit code {p.exitcode})" for role, p in c.processes.items() if p.exitcode is not None]
        if errors or dead:
            raise RuntimeError(f"actor process failed during the benchmark: {'; '.join(errors or dead)}")
        time.sleep(POLL_SECONDS)


def stop_processes(c: Components, timeout: float) -> None:
    """Set the stop event, drain while the children finish, kill stragglers, reap all."""
    c.stop.set()
    deadline = time.monotonic() + timeout
    while any(p.is_alive() for p in c.processes.values()) and time.monotonic() < deadline:
        _drain(c.stats)
        time.sleep(0.02)
    for proc in c.processes.values():
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=2.0)
    _drain(c.stats)
    c.stats.close()
    c.stats.join_thread()
    stop_process_server()


def bench_actor_processes(plain: dict[str, Any], spec: EnvSpec, count: int, seconds: float,
                          base_rate: Optional[float] = None) -> Result:
    """`count` spawned `actor_main` processes; aggregate env steps/s from the shared counters
    (and, given the rate of one process, the scaling against it)."""
    scaled = with_actors(plain, count)
    p = scaled["parallelism"]
    c = connect_components(scaled, spec, serial=False)
    publish_random_weights(scaled, spec, c)
    try:
        for actor_id in range(count):
            settings = replace(build_actor_settings(scaled, spec, actor_id), env_step_budget=None)  # timed: no budget
            proc = c.ctx.Process(
                target=actor_main, name=f"asyncql:actor-{actor_id}", daemon=True,
                args=(settings, c.storage, c.params, c.counters, c.stats, c.stop, os.getpid(), p["torch_threads"]),
            )
            proc.start()
            c.processes[f"actor-{actor_id}"] = proc
        _watch(c, STARTUP_TIMEOUT_SECONDS, until=lambda: bool((c.counters.env_steps > 0).all()))
        if not bool((c.counters.env_steps > 0).all()):
            raise RuntimeError(f"{count} actor process(es) did not start within {STARTUP_TIMEOUT_SECONDS:.0f} s")
        _watch(c, warmup_seconds(seconds))
        steps, start = c.counters.total_env_steps(), time.perf_counter()
        _watch(c, seconds)
        rate = (c.counters.total_env_steps() - steps) / (time.perf_counter() - start)
    finally:
        stop_processes(c, p["join_timeout_seconds"])
    note = f"{count} actor_main process(es), aggregate, {rate / count:,.0f}/process"
    if scaled["env"].get("atari"):
        note += f", {rate * scaled['env']['atari']['frame_skip']:,.0f} frames/s"
    if base_rate:
        note += f", {rate / base_rate:.2f}x 1 process"  # the scaling with cores
    return Result(f"actor.processes_{count}", rate, "env steps/s", RAW_ENV, note=note)


# ------------------------------------------------------------------- replay and learner
def bench_replay(plain: dict[str, Any], spec: EnvSpec, seconds: float) -> list[Result]:
    c = filled_components(plain, spec)
    storage, batch_size = c.storage, plain["algo"]["batch_size"]
    rows = storage_rows(storage, storage.write_batch, plain, spec)
    sampler = UniformSampler(storage, seed=plain["seed"])

    def insert() -> int:
        storage.write(0, rows)
        return storage.write_batch

    def sample() -> int:
        return int(sampler.sample(batch_size) is not None)

    rates = measure({"replay.insert": insert, "replay.sample": sample}, seconds)
    where = f"{storage.capacity:,} rows in {storage.num_segments} segment(s)"
    return [
        Result("replay.insert", rates["replay.insert"], "rows/s", note=f"batches of {storage.write_batch}, {where}"),
        Result("replay.sample", rates["replay.sample"], "batches/s", note=f"batch {batch_size}, {where}"),
    ]


def bare_torch_step(plain: dict[str, Any], spec: EnvSpec, device: torch.device) -> Step:
    """The same TD step as a plain torch script writes it, with nothing around it: no sampling,
    clipping, stats or publishing, and `torch.optim.Adam(fused=True)` (the learner's own Adam
    runs the same kernel); mixed precision and torch.compile as the learner's (`algo.amp`,
    `algo.compile`)."""
    a, b = plain["algo"], plain["algo"]["batch_size"]
    torch.manual_seed(plain["seed"])
    q_net = build_network(plain["network"], spec.obs_shape, spec.num_actions).to(device)
    target_net = build_network(plain["network"], spec.obs_shape, spec.num_actions).to(device)
    target_net.load_state_dict(q_net.state_dict())
    target_net.requires_grad_(False)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=a["lr"], eps=a["adam_eps"], fused=True)
    batch = {name: value.to(device) for name, value in random_rows(b, plain, spec).items()}
    scaler = grad_scaler(device, a["amp"])
    forward_q, forward_target = q_net, target_net
    if a["compile"]:
        forward_q, forward_target = compile_forwards(q_net, target_net, batch["obs"], a["amp"])

    def step() -> int:
        with autocast(device, a["amp"]):
            with torch.no_grad():
                next_action = forward_q(batch["next_obs"]).argmax(1, keepdim=True)
                next_value = forward_target(batch["next_obs"]).float().gather(1, next_action).squeeze(1)
                y = batch["reward"] + batch["discount"] * next_value
            q = forward_q(batch["obs"]).float().gather(1, batch["action"].unsqueeze(1)).squeeze(1)
            loss = F.huber_loss(q, y, delta=a["huber_delta"])
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return 1

    return step


def bench_learner(plain: dict[str, Any], spec: EnvSpec, seconds: float) -> list[Result]:
    c = filled_components(plain, spec)
    with tempfile.TemporaryDirectory(prefix="asyncql-bench-") as run_dir:  # nothing is saved there
        learner = Learner(build_learner_settings(plain, spec, Path(run_dir)), c.storage, c.params,
                          c.counters, c.stats)
        device = learner.device

        def update() -> int:
            return int(learner.update())

        bare = bare_torch_step(plain, spec, device)
        rates = measure({BARE_TORCH: bare, LEARNER: update}, seconds, device_sync(device))
    a, network = plain["algo"], plain["network"]["name"]
    both = f"{network}, batch {a['batch_size']}, amp {a['amp']}" + (", compiled" if a["compile"] else "")
    return [
        Result(BARE_TORCH, rates[BARE_TORCH], "updates/s",
               note=f"{both}, batch already in {device.type} memory, torch.optim.Adam (fused), "
                    "double-DQN Huber"),
        Result(LEARNER, rates[LEARNER], "updates/s", BARE_TORCH,
               note=f"{both}, Learner.update on {device.type}: sample ({type(c.storage).__name__}), "
                    f"{'prefetch, ' if a['prefetch'] else ''}TD step, clip, stats, publish"),
    ]


# ------------------------------------------------------------------------------ report
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_quota() -> Optional[float]:
    """CPUs allowed by the cgroup (v2 cpu.max), if limited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def machine_info(device: torch.device, torch_threads: int) -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
        "cgroup_cpu_quota": _cpu_quota(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "gymnasium": gym.__version__, "torch_threads": torch_threads, "learner_device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def add_ratios(results: list[Result]) -> None:
    values = {r.name: r.value for r in results}
    for result in results:
        base = values.get(result.baseline) if result.baseline else None
        if base:
            result.ratio = result.value / base


def print_report(machine: dict[str, Any], results: list[Result], env_id: str) -> None:
    console = Console(width=None if sys.stdout.isatty() else REPORT_WIDTH)  # files and pipes: no wrapping
    cores = f"{machine['usable_cores']} usable of {machine['logical_cores']} logical cores"
    if machine["cgroup_cpu_quota"] is not None:
        cores += f", cgroup quota {machine['cgroup_cpu_quota']:g} CPUs"
    console.print(f"machine: {machine['cpu']} ({cores}); torch {machine['torch']}, gymnasium "
                  f"{machine['gymnasium']}, learner device {machine['learner_device']}"
                  + (f" ({machine['gpu']})" if "gpu" in machine else ""))
    load = machine["load_average_1m"]
    console.print(f"load average (1 min) {load['start']:.2f} at start, {load['end']:.2f} at end: "
                  "absolute numbers fall when other work shares the cores; the ratios are steadier")
    table = Table(title=f"asyncql bench: {env_id}")
    for column in ("measurement", "value", "unit", "ratio", "vs", "what"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left",
                         no_wrap=column != "what")
    for r in results:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        table.add_row(r.name, f"{r.value:,.0f}", r.unit, ratio, r.baseline or "", r.note)
    console.print(table)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the in-process parts with the thread count every training process gets."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_parts(args: argparse.Namespace, plain: dict[str, Any], spec: EnvSpec) -> list[Result]:
    results: list[Result] = []
    if "env" in args.only or "actor" in args.only:
        results += bench_env_and_actor(args.only, plain, spec, args.seconds)
    if "actor" in args.only:
        base_rate = None
        for count in args.actors:
            results.append(bench_actor_processes(plain, spec, count, args.seconds, base_rate))
            if count == 1:
                base_rate = results[-1].value
    if "replay" in args.only:
        results += bench_replay(plain, spec, args.seconds)
    if "learner" in args.only:
        results += bench_learner(plain, spec, args.seconds)
    add_ratios(results)
    return results


def run_bench(argv: list[str]) -> None:
    args = parse_args(argv)
    plain, spec = compose_config(args)
    threads = plain["parallelism"]["torch_threads"]
    device = resolve_device(plain["parallelism"]["learner_device"])
    machine = machine_info(device, threads)
    load_before = os.getloadavg()[0]
    with torch_threads(threads):
        results = run_parts(args, plain, spec)
    # other work on the machine moves absolute numbers; the load average says how much there was
    machine["load_average_1m"] = {"start": load_before, "end": os.getloadavg()[0]}
    print_report(machine, results, spec.env_id)
    if args.json is not None:
        settings = {
            "command": shlex.join(["asyncql", "bench", *argv]), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "env": spec.env_id, "seconds": args.seconds, "envs_per_actor": args.envs_per_actor,
            "actors": args.actors, "network": args.network, "batch_size": args.batch_size, "hidden": args.hidden,
            "capacity": args.capacity, "amp": args.amp, "compile": args.compile, "prefetch": args.prefetch,
            "device": args.device, "only": args.only,
        }
        try:
            write_json(args.json, {"machine": machine, "settings": settings,
                                   "results": [asdict(r) for r in results]})
        except OSError as exc:
            raise BadInput(f"bench: cannot write --json {args.json} ({exc.strerror})") from None
        Console().print(f"written: {args.json}")

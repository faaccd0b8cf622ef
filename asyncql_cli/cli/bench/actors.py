"""Env and actor throughput: a raw gymnasium loop, one Actor in-process, N actor processes."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

from asyncql_cli.algo.networks import build_network
from asyncql_cli.cli.bench.measure import Result, Step, measure, warmup_seconds
from asyncql_cli.cli.bench.options import with_actors
from asyncql_cli.config.schema import Config
from asyncql_cli.envs.make import EnvSpec, make_vector_env
from asyncql_cli.runtime.forkserver import stop_process_server
from asyncql_cli.runtime.processes import ProcessGroup
from asyncql_cli.runtime.wiring import Shared, Wiring
from asyncql_cli.workers.actor import Actor

STARTUP_TIMEOUT_SECONDS = 120.0  # started actors import torch and gymnasium first
POLL_SECONDS = 0.05
RAW_ENV = "env.raw_gymnasium"
ACTOR = "actor.in_process"


def publish_random_weights(config: Config, spec: EnvSpec, shared: Shared) -> None:
    """Give actors weights to read, so they run the Q-network instead of acting uniformly."""
    shared.stores[0].publish(build_network(config.network, spec.obs_shape, spec.num_actions), 1)


@contextmanager
def raw_env_step(config: Config, spec: EnvSpec) -> Iterator[Step]:
    """The baseline: the actors' vector env stepped with random actions and nothing else."""
    n = config.parallelism.envs_per_actor
    envs = make_vector_env(spec.env, n, training=True)
    rng = np.random.default_rng(config.seed)
    try:
        envs.reset(seed=config.seed)

        def step() -> int:
            envs.step(rng.integers(spec.num_actions, size=n))
            return n

        yield step
    finally:
        envs.close()


def serial_wiring(config: Config, spec: EnvSpec) -> Wiring:
    """In-process components, as `parallelism=serial` wires them (a temporary run dir: nothing is saved)."""
    serial = dataclasses.replace(config, parallelism=dataclasses.replace(config.parallelism, name="serial"))
    return Wiring(serial, spec, Path(tempfile.gettempdir()) / "asyncql-bench")


@contextmanager
def actor_step(config: Config, spec: EnvSpec) -> Iterator[Step]:
    """One `Actor` as training builds it, acting with published weights."""
    wiring = serial_wiring(with_actors(config, 1), spec)
    shared = wiring.allocate()
    publish_random_weights(config, spec, shared)
    actor = Actor(wiring.actor_settings(0), shared.storage, shared.stores[0], shared.counters, shared.stats)
    try:

        def step() -> int:
            actor.step()
            return actor.settings.envs_per_actor

        yield step
    finally:
        actor.close()


def bench_env_and_actor(parts: list[str], config: Config, spec: EnvSpec, seconds: float) -> list[Result]:
    n = config.parallelism.envs_per_actor
    with ExitStack() as stack:
        steps: dict[str, Step] = {}
        if "env" in parts:
            steps[RAW_ENV] = stack.enter_context(raw_env_step(config, spec))
        if "actor" in parts:
            steps[ACTOR] = stack.enter_context(actor_step(config, spec))
        rates = measure(steps, seconds)
    results = []
    if RAW_ENV in rates:
        results.append(Result(RAW_ENV, rates[RAW_ENV], "env steps/s", note=f"SyncVectorEnv x{n}, random actions"))
    if ACTOR in rates:
        results.append(Result(ACTOR, rates[ACTOR], "env steps/s", RAW_ENV,
                              note="Actor.step: eps-greedy Q-net forward, n-step, replay writes"))
    return results


def _watch(group: ProcessGroup, drain: Callable[[], None], seconds: float,
           until: Callable[[], bool] = lambda: False) -> None:
    """Keep draining for `seconds` (or until `until()`); raise if an actor failed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        drain()
        dead = [role for role in group.children if not group.alive(role)]
        if group.errors or dead:
            failed = "; ".join(f"{role}: {group.errors.get(role, 'exited')}" for role in dead or group.errors)
            raise RuntimeError(f"actor process failed during the benchmark: {failed}")
        time.sleep(POLL_SECONDS)


def bench_actor_processes(config: Config, spec: EnvSpec, count: int, seconds: float,
                          base_rate: Optional[float] = None) -> Result:
    """`count` actor processes; aggregate env steps/s from the shared counters (and, given the
    rate of one process, the scaling against it)."""
    scaled = with_actors(config, count)
    # timed: no env-step budget, and no learner to wait for
    scaled = dataclasses.replace(scaled, train=dataclasses.replace(scaled.train, total_env_steps=1 << 62))
    wiring = Wiring(scaled, spec, serial_wiring(config, spec).run_dir)
    shared = wiring.allocate()
    publish_random_weights(config, spec, shared)
    group = ProcessGroup(shared.counters, scaled.parallelism.heartbeat_timeout_seconds, 0)

    def drain() -> None:
        while True:
            try:
                message = shared.stats.get_nowait()
            except Exception:  # noqa: BLE001 - empty, or closed
                return
            if message[0] == "error":
                group.errors[message[1]] = message[2].strip().splitlines()[-1]

    def all_stepping() -> bool:
        return all(shared.counters.env_steps_of(i) > 0 for i in range(count))

    try:
        for actor_id in range(count):
            group.start(wiring.actor_child(actor_id, shared), shared.ctx)
        _watch(group, drain, STARTUP_TIMEOUT_SECONDS, until=all_stepping)
        if not all_stepping():
            raise RuntimeError(f"{count} actor process(es) did not start within {STARTUP_TIMEOUT_SECONDS:.0f} s")
        _watch(group, drain, warmup_seconds(seconds))
        steps, start = shared.counters.total_env_steps(), time.perf_counter()
        _watch(group, drain, seconds)
        rate = (shared.counters.total_env_steps() - steps) / (time.perf_counter() - start)
    finally:
        group.stop(list(group.children), shared.stop, scaled.parallelism.join_timeout_seconds, drain, lambda: False)
        drain()
        shared.stats.close()
        shared.stats.join_thread()
        group.close()
        stop_process_server()
    note = f"{count} actor process(es), aggregate, {rate / count:,.0f}/process"
    if scaled.env.atari is not None:
        note += f", {rate * scaled.env.atari.frame_skip:,.0f} frames/s"
    if base_rate:
        note += f", {rate / base_rate:.2f}x 1 process"  # the scaling with cores
    return Result(f"actor.processes_{count}", rate, "env steps/s", RAW_ENV, note=note)

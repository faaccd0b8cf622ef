"""Replay and learner throughput: inserts and samples on a full ring, `Learner.update` against a
bare torch loop of the same network and batch."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from asyncql_cli.algo.networks import build_network
from asyncql_cli.cli.bench.actors import serial_wiring
from asyncql_cli.cli.bench.measure import Result, Step, device_sync, measure
from asyncql_cli.config.schema import Config
from asyncql_cli.envs.make import EnvSpec
from asyncql_cli.replay.frames import FrameStorage
from asyncql_cli.replay.uniform import UniformSampler
from asyncql_cli.runtime.wiring import Shared, Wiring
from asyncql_cli.workers.device import autocast, compile_forwards, grad_scaler
from asyncql_cli.workers.learner import Learner

BARE_TORCH = "learner.bare_torch"
LEARNER = "learner.update"
TERMINAL_SHARE = 0.05  # of the random transitions that end an episode (discount 0)


def random_obs(count: int, spec: EnvSpec) -> torch.Tensor:
    """Noise observations of the env's shape and dtype (uint8 frames: every byte value)."""
    if spec.obs_dtype == "uint8":
        return torch.randint(0, 256, (count, *spec.obs_shape), dtype=torch.uint8)
    return torch.randn(count, *spec.obs_shape)


def random_rows(count: int, config: Config, spec: EnvSpec) -> dict[str, torch.Tensor]:
    """Transitions shaped like the actors' (values are noise: only the sizes matter here)."""
    a = config.algo
    discount = torch.full((count,), a.gamma ** a.n_step)
    discount[torch.rand(count) < TERMINAL_SHARE] = 0.0
    return {"obs": random_obs(count, spec), "action": torch.randint(spec.num_actions, (count,)),
            "reward": torch.randn(count), "next_obs": random_obs(count, spec), "discount": discount}


def random_frame_rows(count: int, config: Config, spec: EnvSpec) -> dict[str, torch.Tensor]:
    """`FrameStorage` rows of one episode of random frames, each starting an n-step transition."""
    a = config.algo
    return {"frame": torch.randint(0, 256, (count, *spec.obs_shape[1:]), dtype=torch.uint8),
            "action": torch.randint(spec.num_actions, (count,)), "reward": torch.randn(count),
            "discount": torch.full((count,), a.gamma ** a.n_step),
            "bootstrap": torch.full((count,), a.n_step, dtype=torch.int64),
            "episode_step": torch.arange(count, dtype=torch.int32),
            "episode": torch.zeros(count, dtype=torch.int64)}


def storage_rows(storage: Any, count: int, config: Config, spec: EnvSpec) -> dict[str, torch.Tensor]:
    """Rows in the layout `storage` writes (transitions, or single frames for the frame replay)."""
    rows = random_frame_rows if isinstance(storage, FrameStorage) else random_rows
    return rows(count, config, spec)


def filled(config: Config, spec: EnvSpec) -> tuple[Wiring, Shared]:
    """In-process components with every segment full."""
    wiring = serial_wiring(config, spec)
    shared = wiring.allocate()
    storage = shared.storage
    for segment in range(storage.num_segments):
        storage.write(segment, storage_rows(storage, storage.segment_size, config, spec))
    return wiring, shared


def bench_replay(config: Config, spec: EnvSpec, seconds: float) -> list[Result]:
    _, shared = filled(config, spec)
    storage, batch_size = shared.storage, config.algo.batch_size
    rows = storage_rows(storage, storage.write_batch, config, spec)
    sampler = UniformSampler(storage, seed=config.seed)

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


def bare_torch_step(config: Config, spec: EnvSpec, device: torch.device) -> Step:
    """The same TD step as a plain torch script writes it, with nothing around it: no sampling,
    clipping, stats or publishing, and `torch.optim.Adam(fused=True)` (the learner's own Adam
    runs the same kernel); mixed precision and torch.compile as the learner's."""
    a = config.algo
    torch.manual_seed(config.seed)
    q_net = build_network(config.network, spec.obs_shape, spec.num_actions).to(device)
    target_net = build_network(config.network, spec.obs_shape, spec.num_actions).to(device)
    target_net.load_state_dict(q_net.state_dict())
    target_net.requires_grad_(False)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=a.lr, eps=a.adam_eps, fused=True)
    batch = {name: value.to(device) for name, value in random_rows(a.batch_size, config, spec).items()}
    scaler = grad_scaler(device, a.amp)
    forward_q, forward_target = q_net, target_net
    if a.compile:
        forward_q, forward_target = compile_forwards(q_net, target_net, batch["obs"], a.amp)

    def step() -> int:
        with autocast(device, a.amp):
            with torch.no_grad():
                next_action = forward_q(batch["next_obs"]).argmax(1, keepdim=True)
                next_value = forward_target(batch["next_obs"]).float().gather(1, next_action).squeeze(1)
                y = batch["reward"] + batch["discount"] * next_value
            q = forward_q(batch["obs"]).float().gather(1, batch["action"].unsqueeze(1)).squeeze(1)
            loss = F.huber_loss(q, y, delta=a.huber_delta)
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


def bench_learner(config: Config, spec: EnvSpec, seconds: float) -> list[Result]:
    wiring, shared = filled(config, spec)
    with tempfile.TemporaryDirectory(prefix="asyncql-bench-") as run_dir:  # nothing is saved there
        wiring.run_dir = Path(run_dir)
        learner = Learner(wiring.learner_settings(0), shared.storage, shared.stores[0], shared.counters, shared.stats)
        device = learner.device

        def update() -> int:
            return int(learner.update())

        bare = bare_torch_step(config, spec, device)
        rates = measure({BARE_TORCH: bare, LEARNER: update}, seconds, device_sync(device))
    a, network = config.algo, config.network.name
    both = f"{network}, batch {a.batch_size}, amp {a.amp}" + (", compiled" if a.compile else "")
    return [
        Result(BARE_TORCH, rates[BARE_TORCH], "updates/s",
               note=f"{both}, batch already in {device.type} memory, torch.optim.Adam (fused), double-DQN Huber"),
        Result(LEARNER, rates[LEARNER], "updates/s", BARE_TORCH,
               note=f"{both}, Learner.update on {device.type}: sample ({type(shared.storage).__name__}), "
                    f"{'prefetch, ' if a.prefetch else ''}TD step, clip, stats, publish"),
    ]

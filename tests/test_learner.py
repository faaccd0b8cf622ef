"""The learner in-process on a replay with known contents: it learns the right Q-values,
and each algorithm key (target updates, lr schedule, dueling, prioritized, non-finite
handling, publishing) does what it says; so do the keys that feed the device (prefetch,
pinned staging, amp, compile), which must not change what is learned. Also: a learner wired
from a composed config (runtime/wiring.py) starts, publishes, updates and restores."""

from __future__ import annotations

import os
import queue
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import compose_config

from asyncql_cli.algo.losses import td_loss
from asyncql_cli.algo.networks import build_network, num_parameters
from asyncql_cli.algo.update import NonFiniteLoss
from asyncql_cli.checkpoint import save_checkpoint
from asyncql_cli.config.loading import load_config
from asyncql_cli.config.schema import AlgoConfig, BufferConfig, EnvConfig, NetworkConfig
from asyncql_cli.envs.make import EnvSpec, inspect_env
from asyncql_cli.errors import BadInput
from asyncql_cli.replay.frames import FrameStorage
from asyncql_cli.replay.transitions import ReplayStorage
from asyncql_cli.replay.uniform import UniformSampler
from asyncql_cli.runtime.wiring import Wiring
from asyncql_cli.shm.counters import Counters
from asyncql_cli.shm.params import ParameterStore
from asyncql_cli.workers.device import (
    COMPILE_THREADS_VARIABLE,
    CompileFailed,
    PinnedStaging,
    WeightPublisher,
    describe_device,
)
from asyncql_cli.workers.learner import Learner, LearnerSettings, start_learner

NETWORK = NetworkConfig(name="mlp", hidden=[32], dueling=False)
ALGO = AlgoConfig(lr=1e-2, adam_eps=1e-8, double=True, loss="huber", huber_delta=1.0, batch_size=32,
                  target_update=10, target_tau=1.0, max_grad_norm=10.0, replay_ratio=1.0, publish_interval=5,
                  nonfinite="stop")
# the bandit below: observations one-hot of 2 states, 2 actions
BANDIT = EnvSpec(env=EnvConfig(id="bandit"), obs_shape=(2,), obs_dtype="float32", num_actions=2)


def _settings(tmp_path: Path, *, env: EnvSpec = BANDIT, network: NetworkConfig = NETWORK, buffer: str = "uniform",
              device: str = "cpu", learning_starts: int = 0, **algo: Any) -> LearnerSettings:
    """Learner 0 on `device`; keyword arguments other than the named ones change `algo`."""
    return LearnerSettings(
        index=0, env=env, network=network, algo=replace(ALGO, **algo), buffer=BufferConfig(name=buffer),
        device=device, seed=0, sampler_seed=0, learning_starts=learning_starts, total_env_steps=1000,
        stats_interval_seconds=60.0, checkpoint_dir=str(tmp_path), checkpoint_meta={},
    )


def _bandit_storage(reward_nan: bool = False) -> ReplayStorage:
    """One-step episodes: state one-hot of s in {0, 1}; action a pays 1 if a == s else 0."""
    storage = ReplayStorage(capacity=256, num_segments=1, write_batch=16, obs_shape=(2,))
    state = torch.arange(200) % 2
    action = (torch.arange(200) // 2) % 2
    reward = (state == action).float()
    if reward_nan:
        reward[:] = float("nan")
    obs = torch.nn.functional.one_hot(state, 2).float()
    storage.write(0, {"obs": obs, "action": action, "reward": reward, "next_obs": obs,
                      "discount": torch.zeros(200)})
    return storage


def _learner(tmp_path: Path, storage: Any, **changes: Any) -> tuple[Learner, ParameterStore, Counters]:
    settings = _settings(tmp_path, **changes)
    probe = build_network(settings.network, settings.env.obs_shape, settings.env.num_actions)
    params = ParameterStore(num_parameters(probe))
    counters = Counters(num_actors=1, num_updaters=1)
    counters.set_env_steps(0, 200)
    return Learner(settings, storage, params, counters, queue.SimpleQueue()), params, counters


@pytest.mark.parametrize("changes", [
    {}, {"network": replace(NETWORK, dueling=True)}, {"loss": "mse"}, {"buffer": "prioritized"},
    {"buffer": "prioritized", "prefetch": False}, {"amp": "bf16"},
], ids=["plain", "dueling", "mse", "prioritized", "prioritized-no-prefetch", "bf16"])
def test_learner_learns_the_bandit_q_values(tmp_path: Path, changes: dict) -> None:
    learner, params, _ = _learner(tmp_path, _bandit_storage(), **changes)
    assert learner.prioritized == (changes.get("buffer") == "prioritized")
    for _ in range(300):
        assert learner.update()
    q = learner.q_net(torch.eye(2))
    torch.testing.assert_close(q, torch.eye(2), atol=0.05, rtol=0)
    actor_net = build_network(learner.settings.network, (2,), 2)
    assert params.read_into(actor_net) == 300  # published every 5 updates, the last at 300
    torch.testing.assert_close(actor_net(torch.eye(2)), q.detach())


def test_hard_target_update_every_c_updates(tmp_path: Path) -> None:
    learner, _, counters = _learner(tmp_path, _bandit_storage(), target_update=10)
    initial = [p.clone() for p in learner.target_net.parameters()]
    for _ in range(9):
        learner.update()
    assert all(torch.equal(a, b) for a, b in zip(initial, learner.target_net.parameters()))
    learner.update()
    assert counters.learner_updates() == [10]  # the count target updates are timed by
    assert all(torch.equal(a, b) for a, b in zip(learner.q_net.parameters(), learner.target_net.parameters()))


def test_polyak_target_update_moves_part_way(tmp_path: Path) -> None:
    learner, _, _ = _learner(tmp_path, _bandit_storage(), target_update=1, target_tau=0.25)
    before = [p.clone() for p in learner.target_net.parameters()]
    learner.update()
    for old, new, online in zip(before, learner.target_net.parameters(), learner.q_net.parameters()):
        torch.testing.assert_close(new, old + 0.25 * (online - old))


def test_linear_lr_schedule_follows_env_steps(tmp_path: Path) -> None:
    learner, _, counters = _learner(tmp_path, _bandit_storage(), lr=1e-2, lr_schedule="linear", lr_final=1e-3)
    counters.set_env_steps(0, 500)  # half the budget of 1000
    learner.update()
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(5.5e-3)


def test_gradient_clipping_bounds_the_step(tmp_path: Path) -> None:
    clipped, _, _ = _learner(tmp_path, _bandit_storage(), max_grad_norm=1e-3, lr=1.0, adam_eps=1e8)
    before = torch.cat([p.detach().flatten().clone() for p in clipped.q_net.parameters()])
    clipped.update()
    after = torch.cat([p.detach().flatten() for p in clipped.q_net.parameters()])
    # with a huge Adam eps the step is ~ lr * grad / eps, so it is bounded by the clipped norm
    assert torch.linalg.vector_norm(after - before) <= 1e-3 / 1e8 * 1.01


def test_nan_loss_stops_or_skips_without_publishing(tmp_path: Path) -> None:
    learner, params, _ = _learner(tmp_path, _bandit_storage(reward_nan=True))
    learner.publish()
    published = params.flat.clone()
    with pytest.raises(NonFiniteLoss, match="at update 1"):
        learner.update()
    assert torch.equal(params.flat, published)
    skipping, params2, _ = _learner(tmp_path, _bandit_storage(reward_nan=True), nonfinite="skip")
    assert not skipping.update() and skipping.skipped == 1 and skipping.updates == 0


def test_updates_wait_for_data_and_follow_the_replay_ratio(tmp_path: Path) -> None:
    learner, _, counters = _learner(tmp_path, _bandit_storage(), replay_ratio=0.1, learning_starts=100)
    counters.set_env_steps(0, 150)  # 50 learnable steps at 0.1 updates per step
    done = 0
    while learner.data_allows_update() and learner.update():
        done += 1
    assert done == 6  # updates < 0.1 * 50 + 1
    empty, _, _ = _learner(tmp_path, ReplayStorage(256, 1, 16, (2,)), learning_starts=1)
    assert not empty.data_allows_update()


# ------------------------------------------------------------------- feeding the device
ATARI = (4, 84, 84)
CNN = NetworkConfig(name="nature_cnn", hidden=[64], dueling=True)
FRAMES = EnvSpec(env=EnvConfig(id="frames"), obs_shape=ATARI, obs_dtype="uint8", num_actions=3)
FRAME_ROWS = 48  # one episode: 47 steps and the final frame


def _frame_storage() -> FrameStorage:
    """The frame replay (uint8 frames, stacks rebuilt when sampled) holding one episode of random
    frames with random one-step rewards and no bootstrap (discount 0): a regression target. Every
    one of its transitions can be drawn (the ring has not wrapped and is far from the margins)."""
    generator = torch.Generator().manual_seed(5)
    storage = FrameStorage(capacity=128, num_segments=1, write_batch=16, obs_shape=ATARI, n_step=1)
    action = torch.randint(0, 3, (FRAME_ROWS,), generator=generator)
    action[-1] = -1  # the final row: the last frame, no action
    bootstrap = torch.ones(FRAME_ROWS, dtype=torch.int64)
    bootstrap[-1] = 0
    storage.write(0, {
        "frame": torch.randint(0, 256, (FRAME_ROWS, *ATARI[1:]), dtype=torch.uint8, generator=generator),
        "action": action, "reward": torch.rand(FRAME_ROWS, generator=generator),
        "discount": torch.zeros(FRAME_ROWS), "bootstrap": bootstrap,
        "episode_step": torch.arange(FRAME_ROWS, dtype=torch.int32),
        "episode": torch.zeros(FRAME_ROWS, dtype=torch.int64),
    })
    return storage


def _recorded_batches(learner: Learner) -> list[torch.Tensor]:
    """Record the slot indices of every batch the learner's sampler hands out, in order."""
    drawn: list[torch.Tensor] = []
    sample = learner.sampler.sample

    def recording(*args: object) -> object:
        batch = sample(*args)
        drawn.append(batch.index.clone())
        return batch

    learner.sampler.sample = recording  # type: ignore[method-assign]
    return drawn


def test_nature_cnn_learner_reduces_the_td_loss_on_uint8_frames(tmp_path: Path) -> None:
    storage = _frame_storage()
    learner, _, _ = _learner(tmp_path, storage, env=FRAMES, network=CNN, batch_size=16, lr=1e-3,
                             target_update=1000)
    every = storage.gather(torch.arange(FRAME_ROWS - 1))  # the fixed batch: every transition
    assert every["obs"].dtype == torch.uint8 and every["obs"].shape == (FRAME_ROWS - 1, *ATARI)
    drawn = _recorded_batches(learner)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(td_loss(learner.q_net, learner.target_net, every["obs"], every["action"],
                                 every["reward"], every["next_obs"], every["discount"], True, "huber", 1.0).loss)

    before = fixed_loss()
    for _ in range(15):
        assert learner.update()
    assert fixed_loss() < 0.5 * before
    assert all(int(index.max()) < FRAME_ROWS - 1 for index in drawn)  # never the final row


def test_prefetch_draws_the_same_batches_and_learns_the_same_weights(tmp_path: Path) -> None:
    """Uniform sampler, fixed seed: prefetching moves when a batch is drawn, not which, so the
    batches and the weights after N updates are identical (bitwise, on CPU)."""
    runs = {}
    for prefetch in (False, True):
        learner, _, _ = _learner(tmp_path, _bandit_storage(), prefetch=prefetch)
        drawn = _recorded_batches(learner)
        for _ in range(25):
            assert learner.update()
        runs[prefetch] = (learner, drawn)
    (plain, plain_drawn), (fetched, fetched_drawn) = runs[False], runs[True]
    assert len(plain_drawn) == 25 and len(fetched_drawn) == 26  # one batch drawn ahead
    assert fetched.next is not None and plain.next is None
    assert all(torch.equal(a, b) for a, b in zip(plain_drawn, fetched_drawn))
    for a, b in zip(plain.q_net.parameters(), fetched.q_net.parameters()):
        assert torch.equal(a, b)


def test_prefetched_batch_survives_a_skipped_update(tmp_path: Path) -> None:
    """A non-finite loss under nonfinite=skip leaves the next batch drawn, and no weight moved."""
    learner, _, _ = _learner(tmp_path, _bandit_storage(reward_nan=True), nonfinite="skip")
    before = [p.clone() for p in learner.q_net.parameters()]
    assert not learner.update() and not learner.update()
    assert learner.skipped == 2 and learner.next is not None
    assert all(torch.equal(a, b) for a, b in zip(before, learner.q_net.parameters()))


def test_staging_buffers_alternate_and_copy_exactly() -> None:
    """The pinned-buffer path (unpinned on CPU): batch k and k+2 reuse one buffer, k+1 the other."""
    sampler = UniformSampler(_bandit_storage(), seed=0)
    staging = PinnedStaging(torch.device("cpu"), staged=True)
    batches = [sampler.sample(8) for _ in range(3)]
    expected = [{k: v.clone() for k, v in b.tensors().items()} for b in batches]
    moved = []
    for batch, fields in zip(batches, expected):
        moved.append(staging.to_device(batch))
        for name, value in fields.items():  # read before the buffer is reused
            assert torch.equal(moved[-1].tensors()[name], value)
        assert torch.equal(moved[-1].index, batch.index)
        assert moved[-1].logical is batch.logical  # host bookkeeping stays on the host, as drawn
    first, second, third = (m.obs.data_ptr() for m in moved)
    assert first == third != second


def test_staged_learner_learns_what_the_plain_one_learns(tmp_path: Path) -> None:
    weights = []
    for staged in (False, True):
        learner, _, _ = _learner(tmp_path, _bandit_storage())
        learner.staging = PinnedStaging(torch.device("cpu"), staged=staged)
        for _ in range(10):
            assert learner.update()
        weights.append([p.detach().clone() for p in learner.q_net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu_gives_finite_losses(tmp_path: Path, amp: str) -> None:
    """bf16 is CPU autocast; fp16 (refused by config validation on CPU) exercises the
    GradScaler path here, which runs the same on CPU as on CUDA. At lr=1e-3 no fp16 gradient
    overflows at the scaler's initial scale (an overflowed step is skipped: the test below)."""
    learner, _, _ = _learner(tmp_path, _frame_storage(), env=FRAMES, network=CNN, batch_size=8, amp=amp, lr=1e-3)
    losses: list[float] = []
    add = learner.stats_window.add
    learner.stats_window.add = lambda loss, *rest: (losses.append(loss), add(loss, *rest))  # type: ignore
    for _ in range(3):
        assert learner.update()
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert (learner.scaler is not None) == (amp == "fp16")



def test_fp16_step_whose_gradients_overflow_is_skipped_not_counted(tmp_path: Path) -> None:
    """The GradScaler skips a step whose fp16 gradients overflowed and lowers its scale: no
    weight moves, and the step is counted as skipped, not as an update (no target update, no
    learner count); once the scale is low enough, updates go through again."""
    learner, _, counters = _learner(tmp_path, _frame_storage(), env=FRAMES, network=CNN, batch_size=8, amp="fp16",
                                    lr=1e-3, target_update=1, target_tau=0.5)
    learner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # any loss's fp16 gradients overflow
    learner.scale = learner.scaler.get_scale()
    online = [p.clone() for p in learner.q_net.parameters()]
    target = [p.clone() for p in learner.target_net.parameters()]
    assert not learner.update()
    assert learner.skipped == 1 and learner.updates == 0 and counters.learner_updates() == [0]
    assert learner.scaler.get_scale() == 2.0**39
    assert all(torch.equal(a, b) for a, b in zip(online, learner.q_net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(target, learner.target_net.parameters()))
    for _ in range(40):
        if learner.update():
            break
    assert learner.updates == 1 and counters.learner_updates() == [1] and learner.skipped >= 1
    assert learner.scaler.get_scale() < 2.0**39
    assert not all(torch.equal(a, b) for a, b in zip(target, learner.target_net.parameters()))


def test_grad_scaler_state_is_checkpointed_and_restored(tmp_path: Path) -> None:
    """A resumed fp16 learner continues with the scale (and growth count) it stopped at, through
    a weights-only checkpoint file, instead of starting over at the default scale."""
    learner, _, _ = _learner(tmp_path, _frame_storage(), env=FRAMES, network=CNN, batch_size=8, amp="fp16", lr=1e-3)
    learner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    learner.scale = learner.scaler.get_scale()
    for _ in range(40):  # overflowed steps halve the scale until one goes through
        if learner.update():
            break
    assert learner.updates == 1 and learner.update()
    saved = learner.scaler.state_dict()
    assert saved["scale"] < 2.0**40 and saved["_growth_tracker"] == 2
    save_checkpoint(tmp_path / "last.pt", learner.checkpoint_state())
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["grad_scaler"] == saved
    resumed, _, _ = _learner(tmp_path, _frame_storage(), env=FRAMES, network=CNN, batch_size=8, amp="fp16", lr=1e-3)
    assert resumed.scaler.get_scale() != saved["scale"]
    resumed.load_state(state)
    assert resumed.scaler.state_dict() == saved and resumed.scale == saved["scale"]
    plain, _, _ = _learner(tmp_path, _bandit_storage())
    assert "grad_scaler" not in plain.checkpoint_state()  # no scaler without fp16


# ------------------------------------------------------------------- publishing, device, compile threads
class _Event:
    """A CUDA event stand-in for the deferred publisher: completes when the test says so."""

    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True


def _deferred(learner: Learner, params: ParameterStore) -> list[_Event]:
    """Give the learner the CUDA publisher's path (copy, event, publish once landed) on CPU."""
    events: list[_Event] = []
    learner.publisher = WeightPublisher(params, learner.parameters, torch.device("cpu"), deferred=True)
    learner.publisher.record_copy = lambda: events.append(_Event()) or events[-1]  # type: ignore[method-assign]
    return events


def test_a_landed_weight_copy_is_published_on_every_path(tmp_path: Path) -> None:
    """A copy that landed is published by the next update even when that update is skipped, and
    by a learner waiting for data: actors never wait for the next successful update."""
    learner, params, _ = _learner(tmp_path, _bandit_storage(reward_nan=True), nonfinite="skip")
    events = _deferred(learner, params)
    learner.publish()
    assert len(events) == 1 and params.version == 0  # queued, not landed
    events[0].done = True
    assert not learner.update() and learner.skipped == 1  # a skipped step ...
    assert params.version == 2 and params.published_updates == 0  # ... still published the copy
    learner.updates = 3
    learner.publish()
    events[1].done = True
    learner.ready, learner.settings = False, replace(learner.settings, learning_starts=10_000)
    assert not learner.work()  # waiting for data
    assert params.version == 4 and params.published_updates == 3


def test_the_learner_reports_its_resolved_device(tmp_path: Path) -> None:
    learner, _, _ = _learner(tmp_path, _bandit_storage(), device="auto")
    assert learner.stats.get_nowait() == ("device", 0, describe_device(torch.device("cpu")))
    assert describe_device(learner.device).startswith("cuda:" if torch.cuda.is_available() else "cpu (")


def test_a_compiling_learner_bounds_the_compile_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMPILE_THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(torch, "compile", lambda model: model)  # compiling itself is tested below
    settings = replace(_settings(tmp_path, compile=True), torch_threads=2)
    Learner(settings, _bandit_storage(), ParameterStore(100), Counters(1, 1), queue.SimpleQueue())
    assert os.environ[COMPILE_THREADS_VARIABLE] == "2"


def test_compile_failure_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_model: torch.nn.Module) -> object:
        def forward(_obs: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no working C++ compiler\nlong details")
        return forward

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(CompileFailed, match=r"^algo.compile=true: torch.compile failed on cpu "
                                            r"\(RuntimeError: no working C\+\+ compiler\); set algo.compile=false$"):
        _learner(tmp_path, _bandit_storage(), compile=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch internals
@pytest.mark.skipif(not shutil.which("g++"), reason="torch.compile (inductor) needs a C++ compiler (g++) on CPU")
def test_compiled_learner_matches_the_eager_one(tmp_path: Path) -> None:
    weights = []
    for compile_ in (False, True):
        learner, _, _ = _learner(tmp_path, _bandit_storage(), compile=compile_)
        for _ in range(5):
            assert learner.update()
        weights.append([p.detach().clone() for p in learner.q_net.parameters()])
        assert all(p.grad is not None for p in learner.q_net.parameters())
    for eager, compiled in zip(*weights):
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("overrides", "key"), [
    (["algo.amp=fp32"], "algo.amp"),
    (["algo.amp=fp16", "parallelism.learner_device=cpu"], "algo.amp"),
    (["network.name=resnet"], "network.name"),
])
def test_validation_rejects_bad_values(compose: Any, overrides: list[str], key: str) -> None:
    with pytest.raises(BadInput, match=f"^config {key}="):
        load_config(compose(overrides))


# ------------------------------------------------------------------- wired from a config
def _cartpole_rows(count: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return {"obs": torch.randn(count, 4, generator=generator),
            "action": torch.randint(0, 2, (count,), generator=generator), "reward": torch.ones(count),
            "next_obs": torch.randn(count, 4, generator=generator), "discount": torch.full((count,), 0.99**3)}


def test_a_learner_wired_from_a_composed_config_starts_publishes_updates_and_restores(tmp_path: Path) -> None:
    """The wiring's settings carry the config's sections; `start_learner` publishes the initial
    weights (update 0); updates wait for `learning_starts` rows and the replay ratio; a learner
    started from the first one's checkpoint state continues its weights, target and count."""
    config = load_config(compose_config([
        "parallelism=serial", "parallelism.num_actors=1", "buffer.capacity=1024", "actor.write_batch=64",
        "train.learning_starts=256", "algo.batch_size=64", "algo.replay_ratio=0.5", "algo.target_update=2",
    ]))
    spec = inspect_env(config.env, config.network.name)
    wiring = Wiring(config, spec, tmp_path)
    shared = wiring.allocate()
    settings = wiring.learner_settings(0)
    assert (settings.env, settings.network, settings.algo, settings.buffer) == (
        spec, config.network, config.algo, config.buffer)
    assert settings.learning_starts == 256 and settings.checkpoint_dir == str(tmp_path / "checkpoints")

    store = shared.stores[0]
    learner = start_learner(settings, shared.storage, store, shared.counters, shared.stats)
    actor_net = build_network(config.network, spec.obs_shape, spec.num_actions)
    assert store.read_into(actor_net) == 0
    assert all(torch.equal(a, b) for a, b in zip(actor_net.parameters(), learner.q_net.parameters()))
    assert not learner.data_allows_update()  # an empty replay

    shared.storage.write(0, _cartpole_rows(300))
    shared.counters.set_env_steps(0, 262)  # 6 learnable steps at 0.5 updates per step: 4 updates
    done = 0
    while learner.data_allows_update() and learner.update():
        done += 1
    assert done == 4 and shared.counters.learner_updates() == [4]
    assert learner.target_copies == 2  # one copy every algo.target_update=2 learner updates

    state = learner.checkpoint_state()
    assert state["updates"] == 4 and state["env_steps"] == 262 and state["env_id"] == "CartPole-v1"
    store2, counters2 = ParameterStore(num_parameters(actor_net)), Counters(num_actors=1, num_updaters=1)
    resumed = start_learner(settings, shared.storage, store2, counters2, queue.SimpleQueue(), resume_state=state)
    assert resumed.updates == 4 and resumed.target_copies == 2 and counters2.learner_updates() == [4]
    for mine, theirs in ((resumed.q_net, learner.q_net), (resumed.target_net, learner.target_net)):
        assert all(torch.equal(a, b) for a, b in zip(mine.parameters(), theirs.parameters()))
    assert store2.read_into(actor_net) == 4  # the restored weights, published with their count
    assert all(torch.equal(a, b) for a, b in zip(actor_net.parameters(), learner.q_net.parameters()))


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_cuda_learner_syncs_once_per_update(tmp_path: Path, amp: str) -> None:
    """On CUDA: pinned staging, prefetch and amp run, and an update waits for the device once
    (loss.item()), twice with fp16 (the GradScaler's scale, read to tell a skipped step);
    publishing, which copies the weights out, is kept out of the window."""
    learner, _, _ = _learner(tmp_path, _frame_storage(), env=FRAMES, network=CNN, batch_size=16, device="cuda",
                             amp=amp, publish_interval=10_000)
    assert learner.staging.staged
    for _ in range(3):  # first updates: allocator, cuDNN autotuning, Adam state
        assert learner.update()
    torch.cuda.synchronize()
    updates = 5
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(updates):
                assert learner.update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == updates * (2 if amp == "fp16" else 1), [str(w.message) for w in syncs]

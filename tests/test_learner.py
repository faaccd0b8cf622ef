"""The learner in-process on a replay with known contents: it learns the right Q-values,
and each algorithm key (target updates, lr schedule, dueling, prioritized, non-finite
handling, publishing) does what it says; so do the keys that feed the device (prefetch,
pinned staging, amp, compile), which must not change what is learned."""

from __future__ import annotations

import queue
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from asyncql_cli.config import BadInput, validate
from asyncql_cli.learner import CompileFailed, Learner, LearnerSettings, NonFiniteLoss, PinnedStaging
from asyncql_cli.losses import td_loss
from asyncql_cli.networks import build_network, num_parameters
from asyncql_cli.params import ParameterStore
from asyncql_cli.process import Counters
from asyncql_cli.replay import ReplayStorage, UniformSampler

NETWORK = {"name": "mlp", "hidden": [32], "dueling": False}


def _settings(tmp_path: Path, **changes: object) -> LearnerSettings:
    base = LearnerSettings(
        obs_shape=(2,), num_actions=2, network=NETWORK, device="cpu", lr=1e-2, adam_eps=1e-8,
        double=True, loss="huber", huber_delta=1.0, batch_size=32, target_update=10, target_tau=1.0,
        max_grad_norm=10.0, replay_ratio=1.0, learning_starts=0, publish_interval=5, nonfinite="stop",
        seed=0, stats_interval_seconds=60.0, checkpoint_dir=str(tmp_path), checkpoint_interval_seconds=60.0,
        checkpoint_meta={}, total_env_steps=1000,
    )
    return replace(base, **changes)


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


def _learner(tmp_path: Path, storage: ReplayStorage, **changes: object) -> tuple[Learner, ParameterStore, Counters]:
    settings = _settings(tmp_path, **changes)
    probe = build_network(settings.network, settings.obs_shape, settings.num_actions)
    params = ParameterStore(num_parameters(probe))
    counters = Counters(1)
    counters.env_steps[0] = 200
    return Learner(settings, storage, params, counters, queue.SimpleQueue()), params, counters


@pytest.mark.parametrize("changes", [{}, {"network": {**NETWORK, "dueling": True}},
                                     {"loss": "mse"}, {"prioritized": True},
                                     {"prioritized": True, "prefetch": False}, {"amp": "bf16"}])
def test_learner_learns_the_bandit_q_values(tmp_path: Path, changes: dict) -> None:
    learner, params, _ = _learner(tmp_path, _bandit_storage(), **changes)
    for _ in range(300):
        assert learner.update()
    q = learner.q_net(torch.eye(2))
    torch.testing.assert_close(q, torch.eye(2), atol=0.05, rtol=0)
    actor_net = build_network(learner.s.network, (2,), 2)
    assert params.read_into(actor_net) == 300  # published every 5 updates, the last at 300
    torch.testing.assert_close(actor_net(torch.eye(2)), q.detach())


def test_hard_target_update_every_c_updates(tmp_path: Path) -> None:
    learner, _, _ = _learner(tmp_path, _bandit_storage(), target_update=10)
    initial = [p.clone() for p in learner.target_net.parameters()]
    for _ in range(9):
        learner.update()
    assert all(torch.equal(a, b) for a, b in zip(initial, learner.target_net.parameters()))
    learner.update()
    assert all(torch.equal(a, b) for a, b in zip(learner.q_net.parameters(), learner.target_net.parameters()))


def test_polyak_target_update_moves_part_way(tmp_path: Path) -> None:
    learner, _, _ = _learner(tmp_path, _bandit_storage(), target_update=1, target_tau=0.25)
    before = [p.clone() for p in learner.target_net.parameters()]
    learner.update()
    for old, new, online in zip(before, learner.target_net.parameters(), learner.q_net.parameters()):
        torch.testing.assert_close(new, old + 0.25 * (online - old))


def test_linear_lr_schedule_follows_env_steps(tmp_path: Path) -> None:
    learner, _, counters = _learner(tmp_path, _bandit_storage(), lr=1e-2, lr_schedule="linear", lr_final=1e-3)
    counters.env_steps[0] = 500  # half the budget of 1000
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
    counters.env_steps[0] = 150  # 50 learnable steps at 0.1 updates per step
    done = 0
    while learner.data_allows_update() and learner.update():
        done += 1
    assert done == 6  # updates < 0.1 * 50 + 1
    empty, _, _ = _learner(tmp_path, ReplayStorage(256, 1, 16, (2,)), learning_starts=1)
    assert not empty.data_allows_update()


# ------------------------------------------------------------------- feeding the device
ATARI = (4, 84, 84)
CNN = {"name": "nature_cnn", "hidden": [64], "dueling": True}


def _frame_storage(rows: int = 48) -> ReplayStorage:
    """uint8 frame stacks with random one-step rewards (no bootstrap): a regression target."""
    generator = torch.Generator().manual_seed(5)
    storage = ReplayStorage(capacity=64, num_segments=1, write_batch=16, obs_shape=ATARI, obs_dtype="uint8")
    obs = torch.randint(0, 256, (rows, *ATARI), dtype=torch.uint8, generator=generator)
    storage.write(0, {"obs": obs, "action": torch.randint(0, 3, (rows,), generator=generator),
                      "reward": torch.rand(rows, generator=generator), "next_obs": obs.flip(0),
                      "discount": torch.zeros(rows)})
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
    learner, _, _ = _learner(tmp_path, storage, obs_shape=ATARI, num_actions=3, network=CNN, batch_size=16,
                             lr=1e-3, target_update=1000)
    every = storage.gather(torch.arange(48))  # the fixed batch: all rows
    assert every["obs"].dtype == torch.uint8

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(td_loss(learner.q_net, learner.target_net, every["obs"], every["action"],
                                 every["reward"], every["next_obs"], every["discount"], True, "huber", 1.0).loss)

    before = fixed_loss()
    for _ in range(15):
        assert learner.update()
    assert fixed_loss() < 0.5 * before


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
    GradScaler path here, which runs the same on CPU as on CUDA."""
    learner, _, _ = _learner(tmp_path, _frame_storage(), obs_shape=ATARI, num_actions=3, network=CNN,
                             batch_size=8, amp=amp)
    losses: list[float] = []
    add = learner.stats_window.add
    learner.stats_window.add = lambda loss, *rest: (losses.append(loss), add(loss, *rest))  # type: ignore
    for _ in range(3):
        assert learner.update()
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert (learner.scaler is not None) == (amp == "fp16")


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
def test_validation_rejects_bad_values(compose: object, overrides: list[str], key: str) -> None:
    with pytest.raises(BadInput, match=f"^config {key}="):
        validate(compose(overrides))  # type: ignore[operator]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_cuda_learner_syncs_once_per_update(tmp_path: Path, amp: str) -> None:
    """On CUDA: pinned staging, prefetch and amp run, and an update waits for the device once
    (loss.item()); publishing, which copies the weights out, is kept out of the window."""
    learner, _, _ = _learner(tmp_path, _frame_storage(), obs_shape=ATARI, num_actions=3, network=CNN,
                             batch_size=16, device="cuda", amp=amp, publish_interval=10_000)
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
    assert len(syncs) == updates, [str(w.message) for w in syncs]

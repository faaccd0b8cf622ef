"""The learner's GPU path, shown on the CPU where the CPU can show it (issue 16 (a)-(f)), and on
a GPU by the tests marked `cuda` (skipped without one; `benchmarks/gpu_check.py` runs them):

(a) autocast without its weight cache: a no-grad forward and a graded one in one autocast block
    give every parameter the gradient float32 gives it;
(b) the Q head in float32 under autocast: Q-values, targets and the double-DQN argmax keep
    float32's precision;
(c) weight publishing: direct on CPU; deferred (CUDA) publishes only copies that have landed;
(d) the learner names its resolved device, and the main process logs it;
(e) the fp16 GradScaler (tests/test_learner.py: skipped steps, and its checkpointed state);
(f) `use_device` makes cuda:N current; compile workers stay within the torch threads.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from asyncql_cli.algo.losses import td_loss, td_target
from asyncql_cli.algo.networks import build_network, num_parameters
from asyncql_cli.config.schema import NetworkConfig
from asyncql_cli.runtime.stats import StatsRouter
from asyncql_cli.shm.params import ParameterStore
from asyncql_cli.workers import device as device_module
from asyncql_cli.workers.device import (
    COMPILE_THREADS_VARIABLE,
    WeightPublisher,
    autocast,
    bound_compile_threads,
    describe_device,
    resolve_device,
    use_device,
)

CPU = torch.device("cpu")
ATARI = (4, 84, 84)
NETWORKS = {
    "mlp": (NetworkConfig(hidden=[64, 64]), (6,)),
    "mlp-dueling-layernorm": (NetworkConfig(hidden=[64, 64], dueling=True, layer_norm=True), (6,)),
    "cnn-dueling": (NetworkConfig(name="nature_cnn", hidden=[64], dueling=True), ATARI),
}
# relative error (L2) of a bf16 gradient against the float32 one; measured at most 0.084 (the
# CNN's first convolution, 7,056 bf16 products per output); a missing or zero gradient is 1.0
BF16_GRADIENT_ERROR = 0.15


def _pair(name: str, actions: int = 3) -> tuple[torch.nn.Module, torch.nn.Module, tuple[int, ...]]:
    network, shape = NETWORKS[name]
    torch.manual_seed(0)
    q_net, target_net = build_network(network, shape, actions), build_network(network, shape, actions)
    target_net.load_state_dict(q_net.state_dict())
    return q_net, target_net, shape


def _batch(shape: tuple[int, ...], size: int = 16, actions: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)

    def obs() -> torch.Tensor:
        if len(shape) == 3:
            return torch.randint(0, 256, (size, *shape), dtype=torch.uint8, generator=generator)
        return torch.randn(size, *shape, generator=generator)

    return {"obs": obs(), "action": torch.randint(0, actions, (size,), generator=generator),
            "reward": torch.randn(size, generator=generator), "next_obs": obs(), "discount": torch.full((size,), 0.97)}


def _gradients(q_net: torch.nn.Module, target_net: torch.nn.Module, batch: dict[str, torch.Tensor],
               amp: str, device: torch.device = CPU) -> list[Any]:
    """The learner's step up to backward: double DQN (a no-grad forward of Q, then the graded one),
    all inside one autocast block as in Learner.update."""
    for param in q_net.parameters():
        param.grad = None
    with autocast(device, amp):
        out = td_loss(q_net, target_net, batch["obs"], batch["action"], batch["reward"], batch["next_obs"],
                      batch["discount"], True, "huber", 1.0)
    out.loss.backward()
    return [None if p.grad is None else p.grad.clone() for p in q_net.parameters()]


# ------------------------------------------------------------------ (a) autocast's weight cache
def test_autocast_runs_without_its_weight_cache() -> None:
    """pytorch#105211, #112583: with the cache on, torch <= 2.10 hands a graded forward the cast
    weights a no-grad forward made; the learner's autocast turns the cache off."""
    with autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert not torch.is_autocast_cache_enabled()
    with autocast(CPU, "off"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("name", list(NETWORKS))
def test_no_grad_then_grad_under_bf16_gives_every_parameter_its_float32_gradient(name: str) -> None:
    q_net, target_net, shape = _pair(name)
    batch = _batch(shape)
    reference = _gradients(q_net, target_net, batch, "off")
    mixed = _gradients(q_net, target_net, batch, "bf16")
    for (param_name, _), want, got in zip(q_net.named_parameters(), reference, mixed):
        assert got is not None, f"{param_name} got no gradient under bf16"
        assert got.dtype == torch.float32
        error = float((got - want).norm() / want.norm())
        assert error < BF16_GRADIENT_ERROR, f"{param_name}: relative error {error:.3f} against float32"


# ------------------------------------------------------------------ (b) the head in float32
@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_q_values_are_float32_under_autocast(name: str, amp: str) -> None:
    q_net, _, shape = _pair(name)
    with torch.autocast("cpu", dtype=device_module.AMP_DTYPES[amp], cache_enabled=False):
        assert q_net(_batch(shape, size=4)["obs"]).dtype == torch.float32


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_q_value_near_100_is_not_rounded_to_a_bf16_step(name: str) -> None:
    """bf16 keeps 8 significant bits: between 64 and 128 its step is 0.5, so 100.3 would come out
    as 100.5 (and 100.1 and 100.2 as one value). The head's output here is its biases alone
    (dueling: V = 100.2, A = (0.1, -0.1, 0) of mean 0)."""
    q_net, _, shape = _pair(name)
    with torch.no_grad():
        q_net.advantage.weight.zero_()
        if q_net.value is None:
            q_net.advantage.bias.copy_(torch.tensor([100.3, 100.1, 100.2]))
        else:
            q_net.advantage.bias.copy_(torch.tensor([0.1, -0.1, 0.0]))
            q_net.value.weight.zero_()
            q_net.value.bias.fill_(100.2)
    obs = _batch(shape, size=4)["obs"]
    with autocast(CPU, "bf16"):
        q = q_net(obs)
    torch.testing.assert_close(q, torch.tensor([[100.3, 100.1, 100.2]]).expand(4, 3), rtol=0, atol=1e-5)


def test_double_dqn_argmax_and_target_keep_float32_precision_under_bf16() -> None:
    """Online Q(s', .) = (100.1, 100.2): in bf16 both round to 100.0 and the argmax would take
    action 0; in float32 it is action 1, whose target value is 7."""
    q_net, target_net, shape = _pair("mlp", actions=2)
    with torch.no_grad():
        for net, bias in ((q_net, [100.1, 100.2]), (target_net, [0.0, 7.0])):
            net.advantage.weight.zero_()
            net.advantage.bias.copy_(torch.tensor(bias))
    batch = _batch(shape, size=4, actions=2)
    reward, discount = torch.full((4,), 0.25), torch.full((4,), 0.5)
    with autocast(CPU, "bf16"):
        y = td_target(q_net, target_net, reward, batch["next_obs"], discount, double=True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.full((4,), 0.25 + 0.5 * 7.0))


def test_td_errors_and_loss_are_float32_under_bf16() -> None:
    q_net, target_net, shape = _pair("mlp-dueling-layernorm")
    batch = _batch(shape)
    with autocast(CPU, "bf16"):
        out = td_loss(q_net, target_net, batch["obs"], batch["action"], batch["reward"], batch["next_obs"],
                      batch["discount"], True, "huber", 1.0, weight=torch.ones(16))
    assert out.td_error.dtype == out.loss.dtype == out.q_mean.dtype == torch.float32


def test_the_head_without_autocast_is_the_plain_float32_head() -> None:
    """The actors' forward (no autocast) goes straight to the head's layers."""
    q_net, _, shape = _pair("mlp-dueling-layernorm")
    obs = _batch(shape, size=4)["obs"]
    features = q_net.torso(obs)
    advantage, value = q_net.advantage(features), q_net.value(features)
    torch.testing.assert_close(q_net(obs), value + advantage - advantage.mean(1, keepdim=True), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ (c) publishing weights
class FakeEvent:
    """A CUDA event stand-in: completes when the test says so."""

    def __init__(self) -> None:
        self.done = False
        self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = True
        self.done = True


def _deferred_publisher(net: torch.nn.Module) -> tuple[WeightPublisher, ParameterStore, list[FakeEvent]]:
    store = ParameterStore(num_parameters(net))
    publisher = WeightPublisher(store, list(net.parameters()), CPU, deferred=True)
    events: list[FakeEvent] = []

    def record_copy() -> FakeEvent:
        events.append(FakeEvent())
        return events[-1]

    publisher.record_copy = record_copy  # type: ignore[method-assign]
    return publisher, store, events


def _published(store: ParameterStore, network: NetworkConfig) -> tuple[Any, torch.Tensor]:
    reader = build_network(network, (6,), 3)
    updates = store.read_into(reader, timeout=0.0)
    return updates, torch.cat([p.detach().flatten() for p in reader.parameters()])


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()]).clone()


def test_cpu_publisher_publishes_directly() -> None:
    q_net, _, _ = _pair("mlp")
    store = ParameterStore(num_parameters(q_net))
    publisher = WeightPublisher(store, list(q_net.parameters()), CPU)
    assert not publisher.deferred
    publisher.request(3)
    updates, weights = _published(store, NETWORKS["mlp"][0])
    assert updates == 3 and torch.equal(weights, _flat(q_net)) and store.version == 2
    publisher.poll()
    publisher.flush()
    assert store.version == 2  # nothing was pending


def test_deferred_publish_bumps_the_version_only_after_its_copy_landed() -> None:
    q_net, _, _ = _pair("mlp")
    network = NETWORKS["mlp"][0]
    publisher, store, events = _deferred_publisher(q_net)
    at_5 = _flat(q_net)
    publisher.request(5)
    assert len(events) == 1 and store.version == 0  # copy queued, nothing published
    with torch.no_grad():  # the learner goes on; the copy holds the weights of update 5
        for param in q_net.parameters():
            param.add_(1.0)
    at_9 = _flat(q_net)
    publisher.request(9)  # a copy is in flight: remembered, not started
    publisher.poll()
    assert len(events) == 1 and store.version == 0
    events[0].done = True
    publisher.poll()  # publishes update 5, starts the copy of update 9
    updates, weights = _published(store, network)
    assert updates == 5 and torch.equal(weights, at_5) and store.version == 2
    assert len(events) == 2
    with torch.no_grad():
        for param in q_net.parameters():
            param.add_(1.0)
    publisher.flush()  # waits for the copy of update 9 and publishes it
    assert events[1].waited
    updates, weights = _published(store, network)
    assert updates == 9 and torch.equal(weights, at_9) and store.version == 4
    assert publisher.in_flight is None and publisher.wanted is None


def test_requests_while_a_copy_is_in_flight_publish_the_newest() -> None:
    q_net, _, _ = _pair("mlp")
    publisher, store, events = _deferred_publisher(q_net)
    for updates in (4, 8, 12):
        publisher.request(updates)
    events[0].done = True
    publisher.poll()
    events[1].done = True
    publisher.poll()
    assert len(events) == 2  # 8 was superseded by 12 before its copy started
    assert store.published_updates == 12 and store.version == 4


# ------------------------------------------------------------------ (d) the resolved device
def test_describe_device_names_the_cpu_and_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert describe_device(CPU) == f"cpu ({torch.get_num_threads()} threads)"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"Fake GPU {index}")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert describe_device(torch.device("cuda:1")) == "cuda:1 (Fake GPU 1)"
    assert describe_device(torch.device("cuda")) == "cuda:2 (Fake GPU 2)"  # the current device


def test_auto_resolves_to_the_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_the_main_process_logs_each_learners_device(caplog: pytest.LogCaptureFixture) -> None:
    messages: queue.SimpleQueue = queue.SimpleQueue()
    messages.put(("device", 1, "cuda:1 (NVIDIA H200)"))
    router = StatsRouter(messages, reporter=None, counters=None, record=None, errors={},  # type: ignore[arg-type]
                         several_learners=True)
    with caplog.at_level(logging.INFO, logger="asyncql"):
        router.drain()
    assert "learner-1 device: cuda:1 (NVIDIA H200)" in caplog.text


# ------------------------------------------------------------------ (f) device and compile threads
def test_use_device_makes_an_indexed_gpu_current(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    use_device(torch.device("cuda:1"))
    use_device(CPU)
    use_device(torch.device("cuda"))  # already the current device (set_device refuses it: no index)
    assert calls == [torch.device("cuda:1")]


def test_use_device_accepts_a_bare_cuda_device() -> None:
    """torch.cuda.set_device(torch.device("cuda")) raises ValueError (no index) before it
    touches a GPU; learner_device=auto resolves to exactly that device."""
    use_device(torch.device("cuda"))


def test_compile_threads_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMPILE_THREADS_VARIABLE, raising=False)
    monkeypatch.delitem(sys.modules, "torch._inductor.config", raising=False)
    bound_compile_threads(3)
    assert os.environ[COMPILE_THREADS_VARIABLE] == "3"


def test_compile_threads_reach_an_inductor_already_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMPILE_THREADS_VARIABLE, raising=False)
    config = SimpleNamespace(compile_threads=32)
    monkeypatch.setitem(sys.modules, "torch._inductor.config", config)
    bound_compile_threads(2)
    assert config.compile_threads == 2 and os.environ[COMPILE_THREADS_VARIABLE] == "2"


def test_compile_threads_set_by_the_user_stand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPILE_THREADS_VARIABLE, "5")
    config = SimpleNamespace(compile_threads=5)
    monkeypatch.setitem(sys.modules, "torch._inductor.config", config)
    bound_compile_threads(1)
    assert os.environ[COMPILE_THREADS_VARIABLE] == "5" and config.compile_threads == 5


# ------------------------------------------------------------------ on a GPU (skipped without one)
@pytest.mark.cuda
@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_no_grad_then_grad_under_autocast_trains_every_parameter(name: str, amp: str) -> None:
    q_net, target_net, shape = _pair(name)
    cuda = torch.device("cuda")
    q_net, target_net = q_net.to(cuda), target_net.to(cuda)
    batch = {key: value.to(cuda) for key, value in _batch(shape).items()}
    reference = _gradients(q_net, target_net, batch, "off", cuda)
    mixed = _gradients(q_net, target_net, batch, amp, cuda)
    for (param_name, _), want, got in zip(q_net.named_parameters(), reference, mixed):
        assert got is not None and bool(torch.isfinite(got).all()), f"{param_name}: {got}"
        error = float((got - want).norm() / want.norm())
        assert error < BF16_GRADIENT_ERROR, f"{param_name}: relative error {error:.3f} against float32"


@pytest.mark.cuda
def test_cuda_publisher_copies_through_a_pinned_buffer_and_publishes_once_landed() -> None:
    q_net, _, _ = _pair("mlp")
    q_net = q_net.to("cuda")
    store = ParameterStore(num_parameters(q_net))
    publisher = WeightPublisher(store, list(q_net.parameters()), torch.device("cuda"))
    assert publisher.deferred and all(buffer.is_pinned() for buffer in publisher.pinned)
    publisher.request(7)
    publisher.flush()
    updates, weights = _published(store, NETWORKS["mlp"][0])
    assert updates == 7 and torch.equal(weights, _flat(q_net).cpu())


@pytest.mark.cuda
def test_cuda_use_device_and_describe_device() -> None:
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    use_device(last)
    assert torch.cuda.current_device() == last.index
    assert describe_device(torch.device("cuda")) == f"cuda:{last.index} ({torch.cuda.get_device_name(last.index)})"
    use_device(torch.device("cuda", 0))

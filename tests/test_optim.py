"""The learners' Adam: the same updates and checkpoint format as torch.optim.Adam(fused=True),
on torch's private fused kernel and on its public fallback (asyncql_cli.compat)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from asyncql_cli.algo.networks import QNetwork
from asyncql_cli.algo.optim import Adam
from asyncql_cli.compat import use_private


@pytest.fixture(autouse=True, params=[True, False], ids=["private-apis", "public-apis"])
def private_apis(request: pytest.FixtureRequest) -> Iterator[bool]:
    with use_private(request.param):
        yield request.param


def _net(seed: int = 0) -> QNetwork:
    torch.manual_seed(seed)
    return QNetwork(4, 3, [16, 8], dueling=True)


def _set_grads(net: torch.nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(100 + step)
    for param in net.parameters():
        param.grad = torch.randn(param.shape, generator=generator)


def _steps(net: torch.nn.Module, optimizer, first: int, count: int, lr_at: dict[int, float]) -> None:
    for step in range(first, first + count):
        if step in lr_at:
            optimizer.param_groups[0]["lr"] = lr_at[step]
        _set_grads(net, step)
        optimizer.step()


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_steps_equal_torch_fused_adam_bit_for_bit_with_an_lr_change():
    ours_net, torch_net = _net(), _net()
    ours = Adam(ours_net.parameters(), lr=3e-3, eps=1e-6)
    reference = torch.optim.Adam(torch_net.parameters(), lr=3e-3, eps=1e-6, fused=True)
    lr_at = {4: 1e-3}
    _steps(ours_net, ours, 0, 8, lr_at)
    _steps(torch_net, reference, 0, 8, lr_at)
    _same_params(ours_net, torch_net)
    assert any(not torch.equal(p, q) for p, q in zip(ours_net.parameters(), _net().parameters()))


def test_state_dicts_load_across_both_implementations_and_continue_identically():
    torch_net = _net()
    reference = torch.optim.Adam(torch_net.parameters(), lr=2e-3, fused=True)
    _steps(torch_net, reference, 0, 3, {})
    saved = copy.deepcopy(reference.state_dict())

    ours_net = _net()
    ours_net.load_state_dict(torch_net.state_dict())
    ours = Adam(ours_net.parameters(), lr=9.0)  # the saved lr replaces this one, as in torch.optim
    ours.load_state_dict(saved)
    assert ours.param_groups[0]["lr"] == 2e-3
    _steps(torch_net, reference, 3, 4, {})
    _steps(ours_net, ours, 3, 4, {})
    _same_params(ours_net, torch_net)

    # and back: our state_dict is one torch.optim.Adam loads (a checkpoint from either resumes)
    back_net = _net()
    back_net.load_state_dict(ours_net.state_dict())
    back = torch.optim.Adam(back_net.parameters(), lr=1.0, fused=True)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    _steps(back_net, back, 7, 2, {})
    _steps(ours_net, ours, 7, 2, {})
    _same_params(ours_net, back_net)
    assert [float(s["step"]) for s in ours.state_dict()["state"].values()] == [9.0] * len(ours.params)


def test_load_keeps_shared_tensors_shared_and_refuses_a_foreign_state():
    net = _net()
    optimizer = Adam(net.parameters(), lr=1e-3).share_memory_()
    moments = [t.data_ptr() for t in optimizer.exp_avgs]
    source_net = _net()
    source = Adam(source_net.parameters(), lr=1e-3)
    _steps(source_net, source, 0, 2, {})
    optimizer.load_state_dict(source.state_dict())
    assert all(t.is_shared() for t in (*optimizer.exp_avgs, *optimizer.exp_avg_sqs, *optimizer.steps))
    assert [t.data_ptr() for t in optimizer.exp_avgs] == moments
    assert all(torch.equal(a, b) for a, b in zip(optimizer.exp_avgs, source.exp_avgs))

    with pytest.raises(ValueError, match="does not match"):
        Adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3).load_state_dict(source.state_dict())
    wrong = torch.optim.Adam(QNetwork(5, 3, [16, 8], dueling=True).parameters(), lr=1e-3, fused=True)
    for param in wrong.param_groups[0]["params"]:
        param.grad = torch.ones_like(param)
    wrong.step()
    with pytest.raises(ValueError, match="shape"):
        Adam(_net().parameters(), lr=1e-3).load_state_dict(wrong.state_dict())

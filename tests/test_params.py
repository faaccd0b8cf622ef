"""ParameterStore seqlock: readers get whole published models, never a mix of two updates."""

from __future__ import annotations

import time

import pytest
import torch
import torch.multiprocessing as mp
from proc_utils import join_or_kill
from replay_workers import constant_publisher, param_model
from torch.nn.utils import parameters_to_vector

from asyncql_cli.algo.networks import num_parameters
from asyncql_cli.shm.params import ParameterStore


def test_read_before_any_publish_returns_none_and_leaves_the_model_alone():
    model = param_model()
    store = ParameterStore(num_parameters(model))
    before = parameters_to_vector(model.parameters()).clone()
    assert store.read_into(model, timeout=0.05) is None
    assert torch.equal(parameters_to_vector(model.parameters()), before)


def test_publish_then_read_copies_every_parameter():
    torch.manual_seed(0)
    source, target = param_model(), param_model()
    store = ParameterStore(num_parameters(source))
    store.publish(source, updates=17)
    assert store.version == 2 and store.published_updates == 17
    storage_of = [p.data_ptr() for p in target.parameters()]
    assert store.read_into(target) == 17
    for a, b in zip(source.parameters(), target.parameters()):
        assert torch.equal(a, b)
    # copied into the model's own parameters (an optimizer or a forward pass holding them sees it)
    assert [p.data_ptr() for p in target.parameters()] == storage_of
    with torch.no_grad():  # the reader holds a copy, not a view of the shared tensor
        next(source.parameters()).add_(1.0)
    store.publish(source, updates=18)
    assert store.version == 4
    assert not torch.equal(next(source.parameters()), next(target.parameters()))
    assert store.read_into(target) == 18
    assert torch.equal(next(source.parameters()), next(target.parameters()))
    assert store.torn_reads == 0  # no write overlapped these reads


@pytest.mark.slow
@pytest.mark.stress
def test_concurrent_reads_are_never_torn():
    model = param_model()
    store = ParameterStore(num_parameters(model))
    stop = torch.zeros(1, dtype=torch.int64).share_memory_()
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=constant_publisher, args=(store, stop, 10_000_000, 1e-4), daemon=True)
    seen: list[int] = []
    distinct = 0
    try:
        proc.start()
        deadline = time.monotonic() + 240  # a guard against a hang only: the first publish is awaited
        while store.version == 0:
            assert time.monotonic() < deadline, "the publisher never published"
            assert proc.is_alive()
            time.sleep(0.005)
        # Up to 2000 reads, for at most about 2 s (the machine may be shared with other work), and
        # in any case until the reads have raced the writer over at least 20 updates and at least
        # one publish overlapped a copy (the seqlock's race window, seen and thrown away).
        end = time.monotonic() + 2.0
        while ((len(seen) < 2000 and (time.monotonic() < end or len(seen) < 300)) or distinct < 20
               or store.torn_reads == 0):
            assert time.monotonic() < deadline, f"no overlapping publish in {len(seen)} reads"
            assert proc.is_alive(), "the publisher stopped before the reads ended"
            updates = store.read_into(model, timeout=5.0)
            assert updates is not None, "no consistent copy within the timeout"
            vector = parameters_to_vector(model.parameters()).detach()
            lo, hi = float(vector.min()), float(vector.max())
            assert lo == hi, f"torn read: parameters from updates {lo} to {hi}"
            assert lo == float(updates), f"weights of update {lo} reported as update {updates}"
            assert not seen or updates >= seen[-1], "update count went backwards"
            distinct += not seen or updates != seen[-1]
            seen.append(updates)
        assert proc.is_alive(), "the publisher stopped before the reads ended"
    finally:
        stop[0] = 1
        join_or_kill([proc])
    assert not proc.is_alive()
    assert proc.exitcode == 0
    # The reads really raced the writer: they saw many different updates, and copies that a
    # publish overlapped were detected and taken again.
    assert len(set(seen)) >= 20, f"only {len(set(seen))} distinct updates observed"
    assert store.torn_reads > 0

"""`parallelism=serial` steps actors, learner and evaluator in the main process with
`parallelism.torch_threads` threads, as every child process gets: with torch's default (one
thread per core) its small matmuls spin-wait for each other as soon as another process loads a
core. The caller's count comes back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_config

from asyncql_cli.config.loading import load_config
from asyncql_cli.runtime.run import train
from asyncql_cli.workers.actor import Actor
from asyncql_cli.workers.evaluator import Evaluator


def test_serial_run_steps_with_the_configured_threads_and_restores_the_callers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, set[int]] = {"actor": set(), "evaluator": set()}
    actor_step, evaluator_work = Actor.step, Evaluator.work

    def counting_step(self: Actor) -> None:
        seen["actor"].add(torch.get_num_threads())
        actor_step(self)

    def counting_work(self: Evaluator) -> None:
        seen["evaluator"].add(torch.get_num_threads())
        evaluator_work(self)

    monkeypatch.setattr(Actor, "step", counting_step)
    monkeypatch.setattr(Evaluator, "work", counting_work)
    callers = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        cfg = compose_config(["parallelism=serial", "parallelism.torch_threads=1", "train.total_env_steps=300",
                              "train.learning_starts=100", "train.progress=none", "eval.interval_seconds=100",
                              "eval.episodes=1", "network.hidden=[16]"])
        assert train(load_config(cfg), tmp_path / "run") == 0
        assert seen == {"actor": {1}, "evaluator": {1}}
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(callers)

"""Progress counters shared by every process of a run (allocated by the main process).

Single writer per slot: actor i writes `env_steps[i]` and `actor_updates[i]`; learner k (or
actor-learner k) writes `learner_updates[k]`; each child writes only its own heartbeat slot
(actor i: i, learner k: num_actors + k); the main process writes `env_steps_offset` (the steps
of earlier generations of a resumed run) before any child starts. Every access is a relaxed
atomic: the counters publish no other data, so no reader needs more than an untorn value.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from asyncql_cli.shm.sync import AtomicInt64Array

NS_PER_SECOND = 1_000_000_000


def _shared_zeros(count: int) -> AtomicInt64Array:
    return AtomicInt64Array(torch.zeros(count, dtype=torch.int64).share_memory_())


class Counters:
    def __init__(self, num_actors: int, num_updaters: int = 1):
        self.num_actors = num_actors
        self.num_updaters = num_updaters
        self._env_steps = _shared_zeros(num_actors)
        self._actor_updates = _shared_zeros(num_actors)  # learner updates of the weights actor i acts with
        self._learner_updates = _shared_zeros(num_updaters)
        self._env_steps_offset = _shared_zeros(1)
        self._heartbeat = _shared_zeros(num_actors + num_updaters + 1)  # monotonic ns; 0 = not watched

    # -- writers (each slot has one) ------------------------------------------------------
    def set_env_steps(self, actor_id: int, steps: int) -> None:
        self._env_steps.store_relaxed(actor_id, steps)

    def set_actor_updates(self, actor_id: int, updates: int) -> None:
        self._actor_updates.store_relaxed(actor_id, updates)

    def set_learner_updates(self, index: int, updates: int) -> None:
        self._learner_updates.store_relaxed(index, updates)

    def set_env_steps_offset(self, steps: int) -> None:
        self._env_steps_offset.store_relaxed(0, steps)

    def beat(self, slot: int) -> None:
        self._heartbeat.store_relaxed(slot, time.monotonic_ns())

    def clear_beat(self, slot: int) -> None:
        """Not watched until the process in `slot` beats (main process, before a (re)start)."""
        self._heartbeat.store_relaxed(slot, 0)

    # -- readers ----------------------------------------------------------------------------
    def env_steps_of(self, actor_id: int) -> int:
        return self._env_steps.load_relaxed(actor_id)

    def total_env_steps(self) -> int:
        return self.env_steps_of_all() + self._env_steps_offset.load_relaxed(0)

    def env_steps_of_all(self) -> int:
        """This run's actors' steps, without those of the runs it resumes."""
        return int(self._env_steps.load_all_relaxed().sum())

    def learner_updates(self) -> list[int]:
        return self._learner_updates.load_all_relaxed().tolist()

    def learner_updates_of(self, index: int) -> int:
        return self._learner_updates.load_relaxed(index)

    def updates(self) -> int:
        """Gradient updates of all learners together."""
        return int(self._learner_updates.load_all_relaxed().sum())

    def slowest_learner_updates(self) -> int:
        return int(self._learner_updates.load_all_relaxed().min())

    def actor_updates(self) -> np.ndarray:
        return self._actor_updates.load_all_relaxed()

    def learner_slot(self, index: int) -> int:
        return self.num_actors + index

    def evaluator_slot(self) -> int:
        return self.num_actors + self.num_updaters

    def seconds_since_beat(self, slot: int) -> Optional[float]:
        """None while the slot is not watched (cleared, or its process has not beaten yet)."""
        beat = self._heartbeat.load_relaxed(slot)
        return None if beat == 0 else (time.monotonic_ns() - beat) / NS_PER_SECOND

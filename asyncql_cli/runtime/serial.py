"""`parallelism=serial`: the same actors, learner and evaluator, stepped in turn in the main
process (debugging with breakpoints and profilers; fast deterministic tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from asyncql_cli.evaluation.selection import Best
from asyncql_cli.runtime.wiring import Shared, Wiring
from asyncql_cli.workers.actor import Actor
from asyncql_cli.workers.device import torch_threads
from asyncql_cli.workers.evaluator import Evaluator
from asyncql_cli.workers.learner import start_learner

ACTOR_STEPS_PER_TICK = 8  # vector steps of every actor between two looks at the learner and the clock


class SerialRunner:
    def __init__(self, wiring: Wiring, shared: Shared, best: Best, resume_state: Optional[dict[str, Any]]):
        config = wiring.config
        self.torch_threads = config.parallelism.torch_threads
        self.actors = [Actor(wiring.actor_settings(i), shared.storage, shared.store_for_actor(i), shared.counters,
                             shared.stats) for i in range(config.parallelism.num_actors)]
        self.learner = start_learner(wiring.learner_settings(0), shared.storage, shared.stores[0], shared.counters,
                                     shared.stats, resume_state)
        self.evaluator = Evaluator(wiring.evaluator_settings(shared.counters.evaluator_slot()), shared.stores,
                                   shared.counters, shared.stats, best, shared.evaluator_control)

    def step(self) -> None:
        for _ in range(ACTOR_STEPS_PER_TICK):
            for actor in self.actors:
                if not actor.budget_spent():
                    actor.step()
        while self.learner.data_allows_update() and self.learner.update():
            pass
        self.evaluator.work()

    def run(self, loop: Callable[[Callable[[], None]], None]) -> None:
        with torch_threads(self.torch_threads):
            try:
                loop(self.step)
            finally:
                self.learner.finish(main_alive=True)
                for actor in self.actors:
                    actor.finish(main_alive=True)

    def finish_evaluation(self) -> None:
        """After the loop: the evaluator's last words, as its process would say them."""
        with torch_threads(self.torch_threads):
            self.evaluator.finish(main_alive=True)

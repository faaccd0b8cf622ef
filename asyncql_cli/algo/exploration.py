"""Exploration schedules: every env slot's epsilon.

- Ape-X (Horgan et al. 2018): eps_j = base^(1 + alpha * j / (M - 1)) over all M env slots of all
  actors, fixed for the whole run; with a single slot (M = 1) there is no spread to draw from and
  base would be its epsilon for the whole run, so such a run anneals with the linear schedule;
- linear: one epsilon annealed from `start` to `end` over `steps` global env steps;
- Mnih et al. 2016: each actor-learner anneals linearly to its own final epsilon, drawn once
  from {0.1, 0.01, 0.5} with probabilities {0.4, 0.3, 0.3}.
"""

from __future__ import annotations

import numpy as np


def effective_schedule(schedule: str, num_slots: int) -> str:
    """The schedule a run follows: `apex` over a single env slot falls back to `linear`."""
    return "linear" if schedule == "apex" and num_slots == 1 else schedule


def apex_epsilons(num_slots: int, base: float, alpha: float) -> np.ndarray:
    if num_slots == 1:
        return np.array([base])
    return base ** (1.0 + alpha * np.arange(num_slots) / (num_slots - 1))


def draw_final_epsilon(rng: np.random.Generator, finals: tuple[float, ...] | list[float],
                       probs: tuple[float, ...] | list[float]) -> float:
    return float(rng.choice(finals, p=np.asarray(probs) / sum(probs)))


def linear_epsilon(step: int, start: float, end: float, steps: int) -> float:
    return end + (start - end) * max(0.0, 1.0 - step / steps)

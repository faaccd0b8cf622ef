"""Frame-deduplicated replay for stacked image observations (Atari): each frame stored once.

A row is one env step of one env: the newest frame of its observation, the action taken
from it, the n-step return R_t, the bootstrap discount gamma^k (0 after a termination), the
offset k of the row that holds s_{t+k}, and its step within the episode. An episode of L
steps takes L + 1 rows: the last one holds the final frame and has no action (action -1).
Stacks are rebuilt at sampling time: the observation of row t is the frames of rows
t - min(j, episode_step_t) for j = stack-1 .. 0, which is exactly what gymnasium's
`FrameStackObservation(padding_type="reset")` produces (the first frame repeats), so a stack
never reaches into the previous episode. Memory: one frame plus 28 bytes per transition,
instead of 2 x stack frames for stored (s, s') pairs (8x less at stack 4).

Memory ownership is that of `replay.ReplayStorage`: the main process allocates everything
before spawning; the storage is split into one ring segment per env stream (actor i owns
segments i*E .. i*E+E-1 and is their only writer, committing by advancing `cursors[seg]`);
learners only read. The samplers of `replay.py` and `priority.py` work unchanged: they stay
`lookback` rows (the stack) away from the oldest end, `lookahead` rows (the n-step offset,
whose frame is written later) away from the newest end, and redraw `unusable` rows: final
rows, and rows whose stack or next row is not of their episode (an actor that crashed
mid-episode leaves such rows behind; its restart begins a new episode after them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch

from asyncql_cli.replay import SegmentedRings

# stored per row, besides the priority (`save_replay` writes these)
COLUMNS = ("frame", "action", "reward", "discount", "bootstrap", "episode_step")
SMALL_FIELD_BYTES = 8 + 4 + 4 + 8 + 4 + 4  # action, reward, discount, bootstrap, episode_step, priority


def shared_zeros(shape: tuple[int, ...]) -> torch.Tensor:
    """A uint8 tensor in new shared memory. The OS hands out zeroed pages on first touch, so
    gigabytes of frames take well under a second instead of a fill and a copy into shared
    memory (what `torch.zeros(...).share_memory_()` does: 20 s for 7 GB here)."""
    count = int(np.prod(shape))
    try:
        storage = torch.UntypedStorage._new_shared(count)  # what share_memory_ allocates with
    except (AttributeError, RuntimeError):
        return torch.zeros(shape, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def frame_replay_bytes(capacity: int, frame_shape: tuple[int, ...]) -> int:
    """Bytes of shared memory a `FrameStorage` of this capacity allocates."""
    return capacity * (int(np.prod(frame_shape)) + SMALL_FIELD_BYTES)


class FrameStorage(SegmentedRings):
    """Per-stream rings of single frames plus the small fields to rebuild n-step transitions."""

    columns = COLUMNS  # what `save_replay` writes

    def __init__(self, capacity: int, num_segments: int, write_batch: int,
                 obs_shape: tuple[int, ...], n_step: int):
        super().__init__(capacity, num_segments, write_batch)
        self.stack = int(obs_shape[0])
        if self.segment_size <= write_batch + self.stack + n_step:
            raise ValueError(f"{capacity} rows over {num_segments} streams leave too few rows per stream")
        self.lookback = self.stack - 1
        self.lookahead = n_step
        size = self.capacity
        self.frame = shared_zeros((size, *obs_shape[1:]))
        self.action = torch.full((size,), -1, dtype=torch.int64).share_memory_()
        self.reward = torch.full((size,), float("nan")).share_memory_()
        self.discount = torch.full((size,), float("nan")).share_memory_()
        self.bootstrap = torch.zeros(size, dtype=torch.int64).share_memory_()
        self.episode_step = torch.full((size,), -1, dtype=torch.int32).share_memory_()
        self._back = torch.arange(self.lookback, -1, -1)  # j = stack-1 .. 0

    def _stack_slots(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, stack) slots of the frames of each row's observation, clamped at its episode start."""
        position = slots % self.segment_size
        back = torch.minimum(self._back[None, :], self.episode_step[slots].long()[:, None].clamp(min=0))
        return (slots - position)[:, None] + (position[:, None] - back) % self.segment_size

    def next_slots(self, slots: torch.Tensor) -> torch.Tensor:
        position = slots % self.segment_size
        return slots - position + (position + self.bootstrap[slots]) % self.segment_size

    def _stacks(self, slots: torch.Tensor) -> torch.Tensor:
        index = self._stack_slots(slots)
        # index_select on the flat index: several times faster than advanced indexing here
        return self.frame.index_select(0, index.flatten()).view(*index.shape, *self.frame.shape[1:])

    def gather(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rebuilt (s_t, a_t, R_t, s_{t+k}, gamma^k) of each row."""
        return {
            "obs": self._stacks(slots),
            "action": self.action.index_select(0, slots),
            "reward": self.reward.index_select(0, slots),
            "next_obs": self._stacks(self.next_slots(slots)),
            "discount": self.discount.index_select(0, slots),
        }

    def unusable(self, slots: torch.Tensor) -> np.ndarray:
        """Rows that start no transition: final rows, and rows whose stack or s_{t+k} row is not
        of the same episode. Only meaningful for rows no write can touch (the samplers check)."""
        step = self.episode_step[slots].long()
        oldest = self._stack_slots(slots)[:, 0]
        stack_depth = torch.minimum(step, torch.tensor(self.lookback))
        whole_stack = self.episode_step[oldest].long() == step - stack_depth
        next_step = self.episode_step[self.next_slots(slots)].long()
        same_episode = next_step == step + self.bootstrap[slots]
        return ((self.action[slots] < 0) | ~whole_stack | ~same_episode | (self.bootstrap[slots] < 1)).numpy()


class FrameRows:
    """Actor side: turns each env's stream of steps into `FrameStorage` rows, in time order.

    Uses the actor's n-step accumulator on records (env, episode step, observation) instead
    of raw observations, so the n-step return logic exists once; a row is ready when its
    transition is, and each episode end adds the final row (the final frame, no action).
    """

    def __init__(self, num_envs: int, first_segment: int):
        self.first_segment = first_segment
        self.episode_step = np.zeros(num_envs, dtype=np.int64)
        self.staged: list[list[tuple]] = [[] for _ in range(num_envs)]

    def records(self, obs: np.ndarray, step_offset: int = 0) -> np.ndarray:
        """One record per env for the accumulator's `obs` / `next_obs` arguments."""
        out = np.empty(len(obs), dtype=object)
        for e in range(len(obs)):
            out[e] = (e, int(self.episode_step[e]) + step_offset, obs[e])
        return out

    def add(self, transitions: list[tuple], done: np.ndarray, final_obs: np.ndarray) -> None:
        """Stage the rows of the accumulator's transitions, then the final row of each
        finished episode (after its last transitions, so every stream stays in time order)."""
        for (e, step, obs), action, ret, (_, next_step, next_obs), discount in transitions:
            self.staged[e].append((obs[-1], action, ret, discount, next_step - step, step, obs, next_obs))
        for e in np.flatnonzero(done):
            last = int(self.episode_step[e]) + 1
            self.staged[e].append((final_obs[e][-1], -1, 0.0, 0.0, 0, last, None, None))
            self.episode_step[e] = -1
        self.episode_step += 1

    def ready(self, write_batch: int) -> bool:
        return any(len(rows) >= write_batch for rows in self.staged)

    def take(self, priority: Optional[Callable[[dict[str, torch.Tensor]], torch.Tensor]] = None,
             ) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """(segment, rows) for every env with staged rows, and clears them. `priority` maps
        transitions (obs, action, reward, next_obs, discount) to initial priorities (Ape-X);
        final rows get priority 0, so a prioritized sampler never draws them."""
        out = []
        for e, rows in enumerate(self.staged):
            if not rows:
                continue
            frame, action, ret, discount, bootstrap, step, obs, next_obs = zip(*rows)
            columns = {
                "frame": torch.as_tensor(np.stack(frame)),
                "action": torch.as_tensor(action, dtype=torch.int64),
                "reward": torch.as_tensor(ret, dtype=torch.float32),
                "discount": torch.as_tensor(discount, dtype=torch.float32),
                "bootstrap": torch.as_tensor(bootstrap, dtype=torch.int64),
                "episode_step": torch.as_tensor(step, dtype=torch.int32),
            }
            if priority is not None:
                starts = torch.as_tensor(np.flatnonzero(columns["action"].numpy() >= 0))
                columns["priority"] = torch.zeros(len(rows))
                if starts.numel():
                    pick = starts.tolist()
                    columns["priority"][starts] = priority({
                        "obs": torch.as_tensor(np.stack([obs[i] for i in pick])),
                        "action": columns["action"][starts],
                        "reward": columns["reward"][starts],
                        "next_obs": torch.as_tensor(np.stack([next_obs[i] for i in pick])),
                        "discount": columns["discount"][starts],
                    })
            out.append((self.first_segment + e, columns))
            self.staged[e] = []
        return out


def human_bytes(count: int) -> str:
    return f"{count / 1e9:,.2f} GB" if count >= 1e9 else f"{count / 1e6:,.1f} MB"


def describe(storage: Any) -> str:
    """One line for the log: rows, streams and bytes per row."""
    if isinstance(storage, FrameStorage):
        per_row = int(np.prod(storage.frame.shape[1:])) + SMALL_FIELD_BYTES
        return (f"frame replay: {storage.capacity:,} rows in {storage.num_segments} streams, "
                f"{per_row:,} bytes per row, stacks of {storage.stack} rebuilt when sampled")
    return f"replay: {storage.capacity:,} rows in {storage.num_segments} segments"

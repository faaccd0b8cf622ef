"""Frame-deduplicated replay for stacked image observations (Atari): each frame stored once.

A row is one env step of one env: the newest frame of its observation, the action taken
from it, the n-step return R_t, the bootstrap discount gamma^k (0 after a termination), the
offset k of the row that holds s_{t+k}, its step within the episode and its episode id (unique
per stream, actor restart and generation of a run, so rows of different streams folded into one
segment on resume never pass for one episode). An episode of L steps takes L + 1 rows: the last
one holds the final frame and has no action (action -1).
Stacks are rebuilt at sampling time: the observation of row t is the frames of rows
t - min(j, episode_step_t) for j = stack-1 .. 0, which is exactly what gymnasium's
`FrameStackObservation(padding_type="reset")` produces (the first frame repeats), so a stack
never reaches into the previous episode. Memory: one frame plus 40 bytes per transition,
instead of 2 x stack frames for stored (s, s') pairs (8x less at stack 4).

Memory ownership is that of `replay.transitions`: the main process allocates everything
before spawning; the storage is split into one ring segment per env stream (actor i owns
segments i*E .. i*E+E-1 and is their only writer, committing by advancing `cursors[seg]`);
learners only read. The uniform and prioritized samplers serve it as they are: they stay
`lookback` rows (the stack) away from the oldest end, `lookahead` rows (the n-step offset,
whose frame is written later) away from the newest end, and redraw `unusable` rows: final
rows, and rows whose stack or next row is not of their episode (an actor that crashed
mid-episode leaves such rows behind; its restart begins a new episode after them). The check
compares episode ids and steps, so it is exact, not arithmetic that a seam could pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import numpy as np
import torch

from asyncql_cli.compat import shared_uint8
from asyncql_cli.shm.rings import SegmentedRings, shared_full

# stored per row, besides the priority (a replay snapshot holds these)
COLUMNS = ("frame", "action", "reward", "discount", "bootstrap", "episode_step", "episode")
# action, reward, discount, bootstrap, episode_step, episode, priority
SMALL_FIELD_BYTES = 8 + 4 + 4 + 8 + 4 + 8 + 4
STREAM_SHIFT, GENERATION_SHIFT = 32, 48  # episode id = generation << 48 | stream << 32 | count


def episode_id(generation: int, stream: int, count: int) -> int:
    return (generation << GENERATION_SHIFT) | (stream << STREAM_SHIFT) | count


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
        self.frame = shared_uint8((size, *obs_shape[1:]))
        self.action = shared_full((size,), -1, torch.int64)
        self.reward = shared_full((size,), float("nan"))
        self.discount = shared_full((size,), float("nan"))
        self.bootstrap = shared_full((size,), 0, torch.int64)
        self.episode_step = shared_full((size,), -1, torch.int32)
        self.episode = shared_full((size,), -1, torch.int64)
        self._back = torch.arange(self.lookback, -1, -1)  # j = stack-1 .. 0

    @staticmethod
    def bytes_needed(capacity: int, frame_shape: tuple[int, ...]) -> int:
        """Bytes of shared memory a storage of this capacity allocates."""
        return capacity * (int(np.prod(frame_shape)) + SMALL_FIELD_BYTES)

    def describe(self) -> str:
        per_row = int(np.prod(self.frame.shape[1:])) + SMALL_FIELD_BYTES
        return (f"frame replay: {self.capacity:,} rows in {self.num_segments} streams, "
                f"{per_row:,} bytes per row, stacks of {self.stack} rebuilt when sampled")

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
        episode = self.episode[slots]
        oldest = self._stack_slots(slots)[:, 0]
        stack_depth = torch.minimum(step, torch.tensor(self.lookback))
        whole_stack = (self.episode[oldest] == episode) & (self.episode_step[oldest].long() == step - stack_depth)
        following = self.next_slots(slots)
        same_episode = ((self.episode[following] == episode)
                        & (self.episode_step[following].long() == step + self.bootstrap[slots]))
        return ((self.action[slots] < 0) | ~whole_stack | ~same_episode | (self.bootstrap[slots] < 1)).numpy()


class FrameRows:
    """Actor side: turns each env's stream of steps into `FrameStorage` rows, in time order.

    Uses the actor's n-step accumulator on records (env, episode step, observation) instead
    of raw observations, so the n-step return logic exists once; a row is ready when its
    transition is, and each episode end adds the final row (the final frame, no action).
    """

    def __init__(self, num_envs: int, first_segment: int, generation: int = 0, first_episode: int = 0):
        """`first_episode`: where each env's episode count starts; a restarted actor passes a
        count above any its crashed predecessor reached (its env steps), so ids stay unique."""
        self.first_segment = first_segment
        self.generation = generation
        self.episode_step = np.zeros(num_envs, dtype=np.int64)
        self.episodes = np.full(num_envs, first_episode, dtype=np.int64)  # episodes begun per env
        self.staged: list[list[tuple]] = [[] for _ in range(num_envs)]

    def _episode(self, env: int) -> int:
        return episode_id(self.generation, self.first_segment + env, int(self.episodes[env]))

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
            self.staged[e].append((obs[-1], action, ret, discount, next_step - step, step, self._episode(e),
                                   obs, next_obs))
        for e in np.flatnonzero(done):
            last = int(self.episode_step[e]) + 1
            self.staged[e].append((final_obs[e][-1], -1, 0.0, 0.0, 0, last, self._episode(e), None, None))
            self.episode_step[e] = -1
            self.episodes[e] += 1
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
            frame, action, ret, discount, bootstrap, step, episode, obs, next_obs = zip(*rows)
            columns = {
                "frame": torch.as_tensor(np.stack(frame)),
                "action": torch.as_tensor(action, dtype=torch.int64),
                "reward": torch.as_tensor(ret, dtype=torch.float32),
                "discount": torch.as_tensor(discount, dtype=torch.float32),
                "bootstrap": torch.as_tensor(bootstrap, dtype=torch.int64),
                "episode_step": torch.as_tensor(step, dtype=torch.int32),
                "episode": torch.as_tensor(episode, dtype=torch.int64),
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


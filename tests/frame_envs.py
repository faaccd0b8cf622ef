"""A tiny stacked-frame env for the frame-replay tests (registered on import), and actors on it.

`frame_envs:Frames-v0` is a `FrameStackObservation(stack 4, padding "reset")` over a base env
whose 6x6 uint8 frame spells out where it is: pixel [0, 0] the step within the episode,
[0, 1] the episode number, [0, 2] a stream tag (the seed of the first reset). Rewards,
episode lengths and how episodes end are functions of (episode, step), so a reader can
check any rebuilt transition on its own, with no record of what the env did.

The actor helpers live here, not in a test file, so spawned writer processes can import them.
"""

from __future__ import annotations

import queue
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from gymnasium.wrappers import FrameStackObservation
from torch import nn

from asyncql_cli.config.schema import ActorConfig, AtariConfig, EnvConfig, ExplorationConfig, NetworkConfig
from asyncql_cli.envs.make import EnvSpec
from asyncql_cli.shm.counters import Counters
from asyncql_cli.workers.actor import Actor, ActorSettings

STACK = 4
FRAME = (6, 6)
TIME_LIMIT = 20  # episodes longer than this are truncated


def episode_length(episode: int) -> int:
    """Steps until termination; 20 and more are truncated by the time limit first."""
    return 3 + (episode * 7) % 23


def reward_of(episode: int, step: int) -> float:
    """Reward of the step taken from `step` (an integer, exact in float32)."""
    return float((episode * 31 + step) % 7 - 3)


class CountingFrames(gym.Env):
    observation_space = gym.spaces.Box(0, 255, FRAME, np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self) -> None:
        self.episode = -1
        self.step_index = 0
        self.tag = 0

    def _frame(self) -> np.ndarray:
        frame = np.zeros(FRAME, dtype=np.uint8)
        frame[0, 0], frame[0, 1], frame[0, 2] = self.step_index, self.episode, self.tag
        frame[1:, :] = (self.step_index * 3 + self.episode) % 256  # some non-constant content
        return frame

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        if seed is not None:
            self.tag = seed % 256
        # episode numbers wrap at 256 as the uint8 pixel that shows them does, so that rewards and
        # lengths (functions of the episode number) stay readable from the frame in long runs
        self.episode = (self.episode + 1) % 256
        self.step_index = 0
        return self._frame(), {}

    def step(self, action: int):
        reward = reward_of(self.episode, self.step_index)
        self.step_index += 1
        terminated = self.step_index >= episode_length(self.episode)
        return self._frame(), reward, terminated, False, {}


def make_frames() -> gym.Env:
    env = gym.wrappers.TimeLimit(CountingFrames(), max_episode_steps=TIME_LIMIT)
    return FrameStackObservation(env, STACK, padding_type="reset")


gym.register(id="Frames-v0", entry_point=make_frames)


ENV_ID = "frame_envs:Frames-v0"
OBS_SHAPE = (STACK, *FRAME)
NUM_ACTIONS = 3


class FlatQ(nn.Module):
    """A small Q-network on the flattened uint8 stack (the actors' greedy actions and priorities)."""

    def __init__(self, obs_shape: tuple[int, ...] = OBS_SHAPE, num_actions: int = NUM_ACTIONS) -> None:
        super().__init__()
        self.linear = nn.Linear(int(np.prod(obs_shape)), num_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.linear(obs.float().flatten(1) / 255)


def actor_settings(actor_id: int, num_actors: int, envs: int, n_step: int, gamma: float,
                   priorities: bool = False, env_id: str = ENV_ID, atari: Optional[AtariConfig] = None,
                   num_actions: int = NUM_ACTIONS) -> ActorSettings:
    """Settings of an actor on `Frames-v0`, or on an Atari game (`atari` settings given)."""
    env = EnvSpec(env=EnvConfig(id=env_id, kwargs={}, max_episode_steps=None, atari=atari),
                  obs_shape=OBS_SHAPE if atari is None else (atari.frame_stack, atari.screen_size, atari.screen_size),
                  obs_dtype="uint8", num_actions=num_actions)
    return ActorSettings(
        actor_id=actor_id, num_actors=num_actors, envs_per_actor=envs, env=env,
        network=NetworkConfig(name="mlp", hidden=[8], dueling=False),  # unused: the actors act with FlatQ
        exploration=ExplorationConfig(schedule="apex", apex_base=0.4, apex_alpha=7.0, linear_start=1.0,
                                      linear_end=0.01, linear_steps=1000),
        acting=ActorConfig(write_batch=8, weight_sync_steps=100, max_update_debt=None),
        gamma=gamma, n_step=n_step, seed=100 + 10 * actor_id, replay_ratio=1.0, learning_starts=0,
        max_update_debt=None, compute_priorities=priorities,
    )


def make_actor(settings: ActorSettings, storage: Any) -> Actor:
    """An actor acting epsilon-greedily with a fixed `FlatQ` (no parameter store)."""
    torch.manual_seed(settings.actor_id)
    q_net = FlatQ(settings.env.obs_shape, settings.env.num_actions)
    return Actor(settings, storage, None, Counters(settings.num_actors), queue.SimpleQueue(), q_net=q_net)


def frame_writer(storage: Any, actor_id: int, num_actors: int, envs: int, n_step: int, gamma: float,
                 stop: Any) -> None:
    """Child process: an actor that writes its env streams until told to stop."""
    actor = make_actor(actor_settings(actor_id, num_actors, envs, n_step, gamma), storage)
    while not stop.is_set():
        actor.step()
    actor.close()

"""Environment construction and checks, used by every process.

`env.id` may be a registered id (`CartPole-v1`) or `module:EnvId`; gymnasium imports the module
inside `gym.make`, so an env registered by a user's package exists in every spawned process,
not only in the parent. `inspect_env` runs once in the parent and turns every reason asyncql
cannot train on an env into a one-line `BadInput`.

Observations: a Box is used as it is; Discrete, MultiDiscrete, Tuple and Dict spaces (the toy
text envs: Taxi, FrozenLake, CliffWalking, Blackjack) go through gymnasium's
`FlattenObservation`, one-hot codes and boxes concatenated into one flat vector.

Atari games (`env.atari` set, `ALE/<Game>-v5` ids) are built by `envs.atari` with the DQN
preprocessing; `training=True` (the actors' envs only) adds episodic life and reward clipping,
while evaluation and video play whole games on raw rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from asyncql_cli.algo.networks import shape_problem
from asyncql_cli.config.schema import EnvConfig
from asyncql_cli.envs.atari import make_atari_env, register_ale
from asyncql_cli.errors import BadInput

ALE_PREFIX = "ALE/"  # ids of ale-py's Atari games
FLATTENED_SPACES = (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.Tuple, gym.spaces.Dict)


@dataclass(frozen=True)
class EnvSpec:
    """How every process makes the env (`env`), and what the networks and the replay need to
    know of it (plain data)."""

    env: EnvConfig
    obs_shape: tuple[int, ...]
    obs_dtype: str
    num_actions: int

    @property
    def env_id(self) -> str:
        return self.env.id


def make_env(env: EnvConfig, render_mode: Optional[str] = None, training: bool = False,
             max_episode_steps: Optional[int] = None) -> gym.Env:
    """One env; `training` adds the Atari training-only wrappers (episodic life, clipping);
    `max_episode_steps` overrides `env.max_episode_steps` (evaluation's cap)."""
    steps = max_episode_steps if max_episode_steps is not None else env.max_episode_steps
    if env.atari is not None:
        return make_atari_env(env.id, env.kwargs, env.atari, training, render_mode, steps)
    if env.id.startswith(ALE_PREFIX):
        register_ale()  # raw ALE ids resolve too (inspect_env points to env=atari for them)
    extra: dict[str, Any] = dict(env.kwargs or {})
    if steps is not None:
        extra["max_episode_steps"] = steps
    if render_mode is not None:
        extra["render_mode"] = render_mode
    made = gym.make(env.id, **extra)
    if isinstance(made.observation_space, FLATTENED_SPACES):
        made = gym.wrappers.FlattenObservation(made)
    return made


def make_vector_env(env: EnvConfig, num_envs: int, training: bool = True) -> gym.vector.VectorEnv:
    """A synchronous vector env (the actor process is the unit of parallelism).

    Same-step autoreset hands the true last observation in `info["final_obs"]`, so the step
    after an episode end is an ordinary transition of the next episode."""

    def factory() -> gym.Env:
        return make_env(env, training=training)

    return gym.vector.SyncVectorEnv([factory] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)


def inspect_env(env: EnvConfig, network_name: str = "mlp") -> EnvSpec:
    """Build the env once and check that deep Q-learning with `network_name` can run on it: mlp
    takes flat observations, nature_cnn image stacks (channels, height, width)."""
    if env.atari is None and env.id.startswith(ALE_PREFIX):
        raise BadInput(f"env.id={env.id!r} is an Atari game: use env=atari env.id={env.id} "
                       "(or a game's file, e.g. env=Pong), which adds the Atari preprocessing")
    try:
        made = make_env(env)
    except gym.error.Error as exc:
        raise BadInput(f"env.id={env.id!r}: cannot make this env ({_first_line(exc)})") from None
    except (ImportError, ModuleNotFoundError) as exc:
        raise BadInput(f"env.id={env.id!r}: cannot import its module ({_first_line(exc)})") from None
    except TypeError as exc:
        raise BadInput(f"env.kwargs for {env.id!r} are not accepted ({_first_line(exc)})") from None
    except ValueError as exc:  # e.g. the Atari preprocessing refusing env.kwargs={frameskip: 4}
        raise BadInput(f"env.id={env.id!r}: cannot make this env ({_first_line(exc)})") from None
    try:
        action_space, obs_space = made.action_space, made.observation_space
    finally:
        made.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        raise BadInput(f"env.id={env.id!r} has a {type(action_space).__name__} action space; "
                       "Q-learning needs a Discrete action space (one Q-value per action)")
    if not isinstance(obs_space, gym.spaces.Box):
        raise BadInput(f"env.id={env.id!r} has a {type(obs_space).__name__} observation space; "
                       "the networks take a Box, or a space gymnasium can flatten into one")
    problem = shape_problem(network_name, obs_space.shape)
    if problem is not None:
        raise BadInput(f"env.id={env.id!r}: {problem}")
    return EnvSpec(env=env, obs_shape=tuple(int(s) for s in obs_space.shape),
                   obs_dtype=str(np.dtype(obs_space.dtype)), num_actions=int(action_space.n))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

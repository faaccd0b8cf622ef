"""Environment construction and checks, used by every process.

`env.id` may be a registered id (`CartPole-v1`) or `module:EnvId`; gymnasium imports the
module inside `gym.make`, so an env registered by a user's package exists in every spawned
process, not only in the parent. `inspect_env` runs once in the parent and turns every
reason asyncql cannot train on an env into a one-line `BadInput`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from asyncql_cli.config import BadInput


@dataclass(frozen=True)
class EnvSpec:
    """What the networks and the replay need to know about an env (plain data)."""

    env_id: str
    obs_shape: tuple[int, ...]
    obs_dtype: str
    num_actions: int


def make_env(
    env_id: str,
    kwargs: Optional[dict[str, Any]] = None,
    max_episode_steps: Optional[int] = None,
    render_mode: Optional[str] = None,
) -> gym.Env:
    extra: dict[str, Any] = dict(kwargs or {})
    if max_episode_steps is not None:
        extra["max_episode_steps"] = max_episode_steps
    if render_mode is not None:
        extra["render_mode"] = render_mode
    return gym.make(env_id, **extra)


def make_vector_env(
    env_id: str,
    num_envs: int,
    kwargs: Optional[dict[str, Any]] = None,
    max_episode_steps: Optional[int] = None,
) -> gym.vector.VectorEnv:
    """A synchronous vector env (the actor process is the unit of parallelism).

    Same-step autoreset hands the true last observation in `info["final_obs"]`, so the
    step after an episode end is an ordinary transition of the next episode.
    """

    def factory() -> gym.Env:
        return make_env(env_id, kwargs, max_episode_steps)

    return gym.vector.SyncVectorEnv(
        [factory] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP
    )


def inspect_env(
    env_id: str, kwargs: Optional[dict[str, Any]] = None, max_episode_steps: Optional[int] = None
) -> EnvSpec:
    """Build the env once and check that deep Q-learning can run on it."""
    try:
        env = make_env(env_id, kwargs, max_episode_steps)
    except gym.error.Error as exc:
        raise BadInput(f"env.id={env_id!r}: cannot make this env ({_first_line(exc)})") from None
    except (ImportError, ModuleNotFoundError) as exc:
        raise BadInput(f"env.id={env_id!r}: cannot import its module ({_first_line(exc)})") from None
    except TypeError as exc:
        raise BadInput(f"env.kwargs for {env_id!r} are not accepted ({_first_line(exc)})") from None
    try:
        action_space, obs_space = env.action_space, env.observation_space
    finally:
        env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        raise BadInput(
            f"env.id={env_id!r} has a {type(action_space).__name__} action space; "
            "Q-learning needs a Discrete action space (one Q-value per action)"
        )
    if not isinstance(obs_space, gym.spaces.Box):
        raise BadInput(
            f"env.id={env_id!r} has a {type(obs_space).__name__} observation space; "
            "the networks take a Box (flat vectors for mlp)"
        )
    if len(obs_space.shape) != 1:
        raise BadInput(
            f"env.id={env_id!r} has observations of shape {obs_space.shape}; "
            "network=mlp takes flat vectors"
        )
    return EnvSpec(
        env_id=env_id,
        obs_shape=tuple(int(s) for s in obs_space.shape),
        obs_dtype=str(np.dtype(obs_space.dtype)),
        num_actions=int(action_space.n),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""Environment construction and checks, used by every process.

`env.id` may be a registered id (`CartPole-v1`) or `module:EnvId`; gymnasium imports the
module inside `gym.make`, so an env registered by a user's package exists in every spawned
process, not only in the parent. `inspect_env` runs once in the parent and turns every
reason asyncql cannot train on an env into a one-line `BadInput`.

Atari games (`env.atari` set, `ALE/<Game>-v5` ids) are built by `asyncql_cli.atari` with
the DQN preprocessing; `training=True` (the actors' envs only) adds episodic life and reward
clipping, while evaluation and video play whole games on raw rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from asyncql_cli.config import BadInput

ALE_PREFIX = "ALE/"  # ids of ale-py's Atari games


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
    atari: Optional[dict[str, Any]] = None,
    training: bool = False,
) -> gym.Env:
    """One env; `atari` (the `env.atari` settings, None = not Atari) selects the Atari
    preprocessing, where `training` adds episodic life and reward clipping."""
    if atari is not None:
        from asyncql_cli.atari import make_atari_env

        return make_atari_env(env_id, kwargs, atari, training, render_mode, max_episode_steps)
    if env_id.startswith(ALE_PREFIX):
        from asyncql_cli.atari import register_ale

        register_ale()  # raw ALE ids resolve too (inspect_env points to env=atari for them)
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
    atari: Optional[dict[str, Any]] = None,
    training: bool = True,
) -> gym.vector.VectorEnv:
    """A synchronous vector env (the actor process is the unit of parallelism); the actors'
    envs, so `training` defaults to True (matters for Atari only, see `make_env`).

    Same-step autoreset hands the true last observation in `info["final_obs"]`, so the
    step after an episode end is an ordinary transition of the next episode.
    """

    def factory() -> gym.Env:
        return make_env(env_id, kwargs, max_episode_steps, atari=atari, training=training)

    return gym.vector.SyncVectorEnv(
        [factory] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP
    )


def inspect_env(
    env_id: str,
    kwargs: Optional[dict[str, Any]] = None,
    max_episode_steps: Optional[int] = None,
    atari: Optional[dict[str, Any]] = None,
    network_name: str = "mlp",
) -> EnvSpec:
    """Build the env once and check that deep Q-learning with `network_name` can run on it:
    mlp takes flat observations, nature_cnn image stacks (channels, height, width)."""
    if atari is None and env_id.startswith(ALE_PREFIX):
        raise BadInput(f"env.id={env_id!r} is an Atari game: use env=atari env.id={env_id} "
                       "(or a game's file, e.g. env=Pong), which adds the Atari preprocessing")
    try:
        env = make_env(env_id, kwargs, max_episode_steps, atari=atari)
    except gym.error.Error as exc:
        raise BadInput(f"env.id={env_id!r}: cannot make this env ({_first_line(exc)})") from None
    except (ImportError, ModuleNotFoundError) as exc:
        raise BadInput(f"env.id={env_id!r}: cannot import its module ({_first_line(exc)})") from None
    except TypeError as exc:
        raise BadInput(f"env.kwargs for {env_id!r} are not accepted ({_first_line(exc)})") from None
    except ValueError as exc:  # e.g. the Atari preprocessing refusing env.kwargs={frameskip: 4}
        raise BadInput(f"env.id={env_id!r}: cannot make this env ({_first_line(exc)})") from None
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
    from asyncql_cli.networks import shape_problem  # torch only here: envs.py stays light

    problem = shape_problem(network_name, obs_space.shape)
    if problem is not None:
        raise BadInput(f"env.id={env_id!r}: {problem}")
    return EnvSpec(
        env_id=env_id,
        obs_shape=tuple(int(s) for s in obs_space.shape),
        obs_dtype=str(np.dtype(obs_space.dtype)),
        num_actions=int(action_space.n),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

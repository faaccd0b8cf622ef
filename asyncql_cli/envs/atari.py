"""Atari (ALE) environments: the standard DQN preprocessing chain, one config key per step.

`make_atari_env` builds, from the inside out:

1. the ALE game with `frameskip=1` (frame skipping is step 2's), sticky actions
   (`sticky_action_prob`, 0.25 as in v5), the minimal action set and a cap of
   `max_frames_per_episode` raw frames (108,000 = 30 minutes of play);
2. gymnasium's `AtariPreprocessing`: up to `noop_max` random no-ops at reset, `frame_skip`
   (max-pooling the last two frames), grayscale, `screen_size` x `screen_size`, uint8;
   `env.max_episode_steps`, when set, caps a game in agent steps right after it;
3. `GameStats`: the raw return and length (agent steps) of the whole game, all lives, in
   `info["game_return"]` / `info["game_length"]` at the step where the game really ends;
   the actors log these, so episodic life and clipping never distort logged returns;
4. training only, `episodic_life`: `EpisodicLife` (a lost life is `terminated=True`, but the
   following `reset()` continues the same game; a true reset only after game over);
5. `fire_reset` (`auto` | true | false): `FireOnReset` presses FIRE whenever a new life starts;
6. training only, `clip_rewards`: rewards become their sign (-1, 0, 1);
7. gymnasium's `FrameStackObservation(frame_stack, padding_type="reset")`: observations are
   uint8 `(frame_stack, screen_size, screen_size)`, by default `(4, 84, 84)`.

Evaluation and video (`training=False`) skip 4 and 6: they score whole games on raw rewards.

Frame stacks. In gymnasium 1.4, `padding_type="reset"` fills the whole stack with the reset
observation at `reset()` and then appends one frame per step. The stack after step t of an
episode (t = 0 at reset) is therefore frames t-3..t with every index below 0 clamped to 0,
the episode's first frame. In training an "episode" is one life (`EpisodicLife` ends it and
the vector env resets), so a replay that stores single frames rebuilds exactly this stack
as frames t-3..t clamped at the first frame of the actor's episode.

`ale_py` is imported (and its games registered) only when an Atari env is made, so runs on
other envs never load it.
"""

from __future__ import annotations

from typing import Any, Optional, SupportsFloat

import gymnasium as gym
import numpy as np

from asyncql_cli.config.schema import AtariConfig

FIRE = 1  # index of FIRE in the minimal action set of the games that have it
ATARI_ENTRY_POINT = "ale_py"  # ALE games are registered with entry point ale_py.env:AtariEnv
FIRE_RESET_TRIES = 3  # resets tried when FIRE itself ends the episode
ALE_FPS = 60  # emulator frames per second of play (NTSC)


def register_ale() -> None:
    """Register the `ALE/...` ids with gymnasium (idempotent) and silence ALE's banner."""
    import ale_py

    gym.register_envs(ale_py)
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)


def _lives(env: gym.Env) -> int:
    return int(env.unwrapped.ale.lives())  # type: ignore[attr-defined]


class GameStats(gym.Wrapper):
    """Raw return and length (agent steps) of a whole game, all lives.

    At the step where the game really ends (terminated or truncated below this wrapper),
    the info dict gets `game_return` (float, raw rewards) and `game_length` (int).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.game_return = 0.0
        self.game_length = 0

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None) -> tuple[Any, dict]:
        self.game_return, self.game_length = 0.0, 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_return += float(reward)
        self.game_length += 1
        if terminated or truncated:
            info = {**info, "game_return": self.game_return, "game_length": self.game_length}
        return obs, reward, terminated, truncated, info


class EpisodicLife(gym.Wrapper):
    """A lost life ends the episode for the learner (`terminated=True`) but not the game:
    `reset()` then takes one no-op step and plays on. The game is really reset only after
    game over, on the first call, or when a seed is given (DQN / SB3 semantics)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = bool(terminated or truncated)
        lives = _lives(self.env)
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None) -> tuple[Any, dict]:
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)  # NOOP
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        self.game_over = False
        self.lives = _lives(self.env)
        return obs, info


class FireOnReset(gym.Wrapper):
    """Press FIRE whenever a new life starts: after `reset()`, and after a lost life that did
    not end the episode (evaluation, where lives are not episodes). Games like Breakout
    wait for FIRE to launch the ball; a greedy policy that never fires would stall there."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None) -> tuple[Any, dict]:
        for _ in range(FIRE_RESET_TRIES):
            obs, info = self.env.reset(seed=seed, options=options)
            seed = None  # a retry continues the random stream instead of replaying the same start
            obs, _, terminated, truncated, step_info = self.env.step(FIRE)
            if not (terminated or truncated):
                self.lives = _lives(self.env)
                return obs, {**info, **step_info}
        obs, info = self.env.reset(options=options)
        self.lives = _lives(self.env)
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = _lives(self.env)
        if lives < self.lives and not (terminated or truncated):
            obs, extra, terminated, truncated, info = self.env.step(FIRE)
            reward = float(reward) + float(extra)
            lives = _lives(self.env)
        self.lives = lives
        return obs, reward, terminated, truncated, info


def needs_fire(env: gym.Env, fire_reset: Any) -> bool:
    """`fire_reset`: true, false, or "auto": FIRE is action 1 of at least 3 and the game has
    lives (Breakout, where the ball waits for FIRE; not Pong, which serves by itself and
    has no lives counter)."""
    if isinstance(fire_reset, bool):
        return fire_reset
    meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
    return len(meanings) >= 3 and meanings[FIRE] == "FIRE" and _lives(env) > 0


def _check_atari_id(env_id: str) -> None:
    entry_point = gym.spec(env_id).entry_point  # raises gym.error.Error for unknown ids
    if ATARI_ENTRY_POINT not in str(getattr(entry_point, "__module__", entry_point)):
        raise gym.error.Error(f"{env_id} is not an Atari game; env=atari needs an ALE/<Game>-v5 id")


def make_atari_env(
    env_id: str,
    kwargs: Optional[dict[str, Any]],
    atari: AtariConfig,
    training: bool,
    render_mode: Optional[str] = None,
    max_episode_steps: Optional[int] = None,
) -> gym.Env:
    """The preprocessed Atari env (module docstring); `training` adds episodic life and
    reward clipping. `kwargs` go to the ALE env and win over the values set here."""
    register_ale()
    _check_atari_id(env_id)
    a = atari
    base_kwargs: dict[str, Any] = {
        "frameskip": 1,
        "repeat_action_probability": a.sticky_action_prob,
        "full_action_space": False,
        "max_num_frames_per_episode": a.max_frames_per_episode,
    }
    if render_mode is not None:
        base_kwargs["render_mode"] = render_mode
    env = gym.make(env_id, **{**base_kwargs, **(kwargs or {})})
    fire = needs_fire(env, a.fire_reset)
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=a.noop_max, frame_skip=a.frame_skip, screen_size=a.screen_size,
        grayscale_obs=True, terminal_on_life_loss=False,
    )
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    env = GameStats(env)
    if training and a.episodic_life:
        env = EpisodicLife(env)
    if fire:
        env = FireOnReset(env)
    if training and a.clip_rewards:
        env = gym.wrappers.TransformReward(env, np.sign)
    env = gym.wrappers.FrameStackObservation(env, stack_size=a.frame_stack, padding_type="reset")
    # one rendered frame per agent step: real-time video plays ALE_FPS / frame_skip of them a second
    env.metadata = {**env.metadata, "render_fps": ALE_FPS / a.frame_skip}
    return env

"""The Atari env layer (asyncql_cli/envs/atari.py, env=atari|Pong|Breakout): real ALE games on the
CPU, a few hundred to a few thousand agent steps each (fast: ALE runs ~1,000+ steps/s).

Contract checked here: observations are uint8 (frame_stack, 84, 84) stacks that equal frames
t-3..t clamped at the episode's first frame (what the frame replay rebuilds); training envs end
an episode at every lost life but play on, and clip rewards; evaluation envs play whole games
on raw rewards; `info["game_return"]` / `info["game_length"]` report each whole game raw;
FIRE is pressed for Breakout, not Pong, under fire_reset=auto; configs compose and validate.
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np
import pytest
from conftest import compose_config

from asyncql_cli.config.loading import load_config
from asyncql_cli.config.schema import AtariConfig, EnvConfig
from asyncql_cli.envs.atari import make_atari_env
from asyncql_cli.envs.make import inspect_env, make_env, make_vector_env
from asyncql_cli.errors import BadInput

MAX_STEPS = 5_000  # a random game of Breakout / Pong / SpaceInvaders ends well before this


def _env(game: str, training: bool, **atari: Any) -> gym.Env:
    """The game with the default preprocessing (AtariConfig()), `atari` changing some of it."""
    return make_atari_env(f"ALE/{game}-v5", {}, AtariConfig(**atari), training)


def _atari(env_id: str) -> EnvConfig:
    """The `env` section of env=atari env.id=<env_id>: default preprocessing."""
    return EnvConfig(id=env_id, atari=AtariConfig())


def _play_game(env: gym.Env, seed: int, action: Optional[int] = None) -> list[tuple]:
    """Steps (reward, terminated, truncated, info) of one whole game from a seeded reset,
    resetting after each learner episode (lost life) until the game reports itself over."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    steps: list[tuple] = []
    for _ in range(MAX_STEPS):
        a = int(rng.integers(env.action_space.n)) if action is None else action
        _, reward, terminated, truncated, info = env.step(a)
        steps.append((float(reward), terminated, truncated, info))
        if "game_return" in info:
            return steps
        if terminated or truncated:
            env.reset()
    raise AssertionError(f"no game over within {MAX_STEPS} steps")


# ------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("game", ["Pong", "Breakout"])
@pytest.mark.parametrize("training", [True, False])
def test_observations_are_uint8_stacks_of_four_84x84_frames(game: str, training: bool) -> None:
    env = _env(game, training)
    try:
        assert env.observation_space.shape == (4, 84, 84)
        assert env.observation_space.dtype == np.uint8
        assert isinstance(env.action_space, gym.spaces.Discrete)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        for _ in range(10):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
            assert obs in env.observation_space
    finally:
        env.close()


def test_stack_and_screen_size_follow_the_settings() -> None:
    env = _env("Pong", True, frame_stack=2, screen_size=64)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (2, 64, 64)
    env.close()


# ------------------------------------------------------------------------- frame stacks
def test_stack_is_frames_t_minus_3_to_t_clamped_at_the_episode_start() -> None:
    """What the frame replay rebuilds at sample time: the observation after step t of an
    episode is its frames t-3..t, indices below 0 clamped to the first (reset) frame. With
    episodic life every life is an episode; checked over 400 steps and many of them."""
    env = _env("Breakout", True)
    rng = np.random.default_rng(1)
    obs, _ = env.reset(seed=1)
    frames = [obs[-1]]  # the latest frame of every observation of the current episode
    life_ends = game_ends = moving = 0

    def expected() -> np.ndarray:
        t = len(frames) - 1
        return np.stack([frames[max(0, i)] for i in range(t - 3, t + 1)])

    assert obs[0].any(), "the reset stack is padded with the reset frame, not zeros"
    np.testing.assert_array_equal(obs, expected())
    for _ in range(400):
        obs, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        frames.append(obs[-1])
        np.testing.assert_array_equal(obs, expected())
        moving += int(not np.array_equal(obs[0], obs[-1]))
        if terminated or truncated:
            game_ends += "game_return" in info
            life_ends += "game_return" not in info
            obs, _ = env.reset()
            frames = [obs[-1]]
            np.testing.assert_array_equal(obs, expected())
    env.close()
    assert life_ends >= 2 and game_ends >= 1, (life_ends, game_ends)
    assert moving > 100  # the frames of a stack really differ: the comparison is not trivial


def test_same_seed_same_game() -> None:
    """reset(seed=...) seeds the first game of a training env (no-ops, sticky actions)."""
    runs = []
    for _ in range(2):
        env = _env("Breakout", True)
        rng = np.random.default_rng(3)
        obs, _ = env.reset(seed=7)
        seen = [obs]
        for _ in range(150):
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            seen.append(obs)
            if terminated or truncated:
                obs, _ = env.reset()
                seen.append(obs)
        env.close()
        runs.append(np.stack(seen))
    np.testing.assert_array_equal(runs[0], runs[1])


# ------------------------------------------------------------------------ episodic life
def test_training_env_ends_an_episode_per_life_but_plays_on() -> None:
    env = _env("Breakout", True)
    steps = _play_game(env, seed=0)
    env.close()
    life_losses = [info for _, terminated, _, info in steps if terminated and "game_return" not in info]
    # Breakout has 5 lives: 4 learner episodes end with a lost life, the 5th with game over
    assert [info["lives"] for info in life_losses] == [4, 3, 2, 1]
    final = steps[-1][3]
    assert steps[-1][1] and final["lives"] == 0
    assert final["game_length"] >= len(steps)  # whole game (+ the hidden no-op / FIRE steps)


def test_reset_after_a_lost_life_continues_the_game() -> None:
    env = _env("Breakout", True)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    for _ in range(MAX_STEPS):
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if terminated:
            break
    assert info["lives"] == 4 and "game_return" not in info
    _, reset_info = env.reset()
    env.close()
    assert reset_info["lives"] == 4  # no full reset: the lost life stays lost
    assert reset_info["episode_frame_number"] > info["episode_frame_number"]  # same game, later


def test_evaluation_env_plays_whole_games() -> None:
    env = _env("Breakout", False)
    steps = _play_game(env, seed=0)
    env.close()
    lives = [info["lives"] for *_, info in steps]
    assert lives[0] == 5 and lives[-1] == 0 and len(set(lives)) == 6  # every life, one episode
    assert not any(terminated or truncated for _, terminated, truncated, _ in steps[:-1])
    assert steps[-1][1]


# ------------------------------------------------------------------- rewards and returns
def test_training_rewards_are_clipped_and_game_return_is_raw() -> None:
    """SpaceInvaders scores 5-30 points per invader: clipping is visible."""
    env = _env("SpaceInvaders", True)
    steps = _play_game(env, seed=0)
    env.close()
    rewards = [r for r, *_ in steps]
    assert set(rewards) <= {-1.0, 0.0, 1.0}
    assert steps[-1][3]["game_return"] > sum(rewards) > 0  # raw points, not the clipped sum


def test_evaluation_rewards_are_raw_and_sum_to_game_return() -> None:
    env = _env("SpaceInvaders", False)
    steps = _play_game(env, seed=0)
    env.close()
    rewards = [r for r, *_ in steps]
    assert max(rewards) > 1.0
    assert steps[-1][3]["game_return"] == pytest.approx(sum(rewards))


def test_game_length_counts_agent_steps_and_max_episode_steps_caps_a_game() -> None:
    env = make_env(_atari("ALE/Pong-v5"), max_episode_steps=50, training=False)
    env.reset(seed=0)
    for _ in range(50):
        _, _, terminated, truncated, info = env.step(0)
    env.close()
    assert truncated and not terminated
    assert info["game_length"] == 50 and info["game_return"] <= 0.0


def test_vector_env_reports_games_in_final_info() -> None:
    """The actors' vector env (same-step autoreset): lost lives end learner episodes;
    `info["final_info"]["game_return"]` (mask `_game_return`) marks the envs whose game ended."""
    envs = make_vector_env(_atari("ALE/Breakout-v5"), 2, training=True)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    rng = np.random.default_rng(0)
    lives_lost = games = 0
    for _ in range(400):
        obs, rewards, terminated, truncated, info = envs.step(rng.integers(4, size=2))
        assert set(rewards.tolist()) <= {-1.0, 0.0, 1.0}
        done = terminated | truncated
        if done.any():
            ended = info["final_info"].get("_game_return", np.zeros(2, dtype=bool))
            games += int(ended.sum())
            lives_lost += int((done & ~ended).sum())
            assert not (ended & ~done).any()
            assert all(info["final_info"]["game_length"][e] > 0 for e in np.flatnonzero(ended))
    envs.close()
    assert games >= 2 and lives_lost >= 4 * games - 2


# ------------------------------------------------------------------------------- FIRE
def _reset_frame(game: str, fire_reset: Any) -> int:
    env = _env(game, False, fire_reset=fire_reset)
    _, info = env.reset(seed=0)
    env.close()
    return int(info["episode_frame_number"])


def test_fire_reset_auto_fires_for_breakout_not_for_pong() -> None:
    # one FIRE step = frame_skip (4) more frames after the same seeded no-op reset
    assert _reset_frame("Breakout", "auto") == _reset_frame("Breakout", False) + 4
    assert _reset_frame("Pong", "auto") == _reset_frame("Pong", False)
    assert _reset_frame("Pong", True) == _reset_frame("Pong", False) + 4


def test_breakout_waits_for_fire_and_fire_reset_launches_every_ball() -> None:
    """Doing nothing: without FIRE the ball never comes; with fire_reset the game is lost
    ball after ball (in evaluation too, where a lost life is not a reset)."""
    idle = _env("Breakout", False, fire_reset=False)
    idle.reset(seed=0)
    for _ in range(300):
        _, _, terminated, _, info = idle.step(0)
        assert not terminated and info["lives"] == 5
    idle.close()
    env = _env("Breakout", False)
    steps = _play_game(env, seed=0, action=0)
    env.close()
    assert steps[-1][3]["lives"] == 0


def test_video_of_an_atari_game_is_nonblank_and_real_time(tmp_path: Any) -> None:
    """eval.video plays the evaluation env (raw rewards) and renders the full ALE screen at
    60 / frame_skip = 15 frames a second of play."""
    import torch

    from asyncql_cli.evaluation.video import record_video

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 84 * 84, 6))
    result = record_video(net, _atari("ALE/Pong-v5"), 1, 0, tmp_path / "pong.mp4", max_frames=40)
    assert result.video_fps == 15.0 and result.num_frames == 40
    assert result.path.stat().st_size > 1_000 and float(np.std(result.frames[-1])) > 1.0


# ------------------------------------------------------------------------- inspect_env
def test_inspect_env_accepts_atari_for_nature_cnn() -> None:
    spec = inspect_env(_atari("ALE/Pong-v5"), network_name="nature_cnn")
    assert spec.obs_shape == (4, 84, 84) and spec.obs_dtype == "uint8" and spec.num_actions == 6
    assert spec.env == _atari("ALE/Pong-v5") and spec.env_id == "ALE/Pong-v5"


@pytest.mark.parametrize(
    ("env_id", "atari", "network", "expected"),
    [
        ("ALE/Pong-v5", AtariConfig(), "mlp", "network=mlp takes flat vectors"),
        ("CartPole-v1", None, "nature_cnn", "network=nature_cnn takes images"),
        ("ALE/NoSuchGame-v5", AtariConfig(), "nature_cnn", "ALE/NoSuchGame-v5"),
        ("ALE/Pong-v5", None, "nature_cnn", "env=atari"),
        ("CartPole-v1", AtariConfig(), "nature_cnn", "not an Atari game"),
    ],
)
def test_inspect_env_rejects_mismatches_in_one_line(env_id: str, atari: Optional[AtariConfig], network: str,
                                                   expected: str) -> None:
    with pytest.raises(BadInput) as info:
        inspect_env(EnvConfig(id=env_id, atari=atari), network_name=network)
    assert expected in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ config
def test_env_pong_selects_nature_cnn_and_atari_settings() -> None:
    cfg = compose_config(["env=Pong"])
    config = load_config(cfg)
    assert cfg.env.id == "ALE/Pong-v5" and cfg.network.name == "nature_cnn"
    assert cfg.env.atari.frame_stack == 4 and cfg.env.atari.episodic_life is True
    assert isinstance(config.env.atari, AtariConfig) and config.env.atari.frame_stack == 4  # typed
    assert compose_config(["env=Pong", "network=mlp"]).network.name == "mlp"  # the command line wins
    assert compose_config().env.atari is None  # CartPole: not Atari


@pytest.mark.parametrize("overrides", [["env=atari", "env.id=ALE/Breakout-v5"], ["env=Breakout"]])
def test_breakout_composes(overrides: list[str]) -> None:
    cfg = compose_config(overrides)
    load_config(cfg)
    assert cfg.env.id == "ALE/Breakout-v5" and cfg.network.name == "nature_cnn"
    assert cfg.env.atari.fire_reset == "auto"


def test_env_atari_needs_an_id() -> None:
    with pytest.raises(BadInput, match=r"env\.id"):
        load_config(compose_config(["env=atari"]))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("env.atari.frame_stack=0", "env.atari.frame_stack"),
        ("env.atari.frame_skip=0", "env.atari.frame_skip"),
        ("env.atari.screen_size=-84", "env.atari.screen_size"),
        ("env.atari.noop_max=-1", "env.atari.noop_max"),
        ("env.atari.sticky_action_prob=1.5", "env.atari.sticky_action_prob"),
        ("env.atari.max_frames_per_episode=0", "env.atari.max_frames_per_episode"),
        ("env.atari.fire_reset=sometimes", "env.atari.fire_reset"),
    ],
)
def test_bad_atari_values_are_bad_input(override: str, key: str) -> None:
    cfg = compose_config(["env=Pong", override])
    with pytest.raises(BadInput) as info:
        load_config(cfg)
    assert f"config {key}=" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["true", "false", "auto"])
def test_fire_reset_accepts_auto_true_false(value: str) -> None:
    load_config(compose_config(["env=Breakout", f"env.atari.fire_reset={value}"]))

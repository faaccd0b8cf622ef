"""Deliberately broken envs for fault tests, registered on import.

Use them as `env=gym env.id=broken_envs:<Id>` with this directory on PYTHONPATH; gymnasium
imports the module in every process, like a user's own env package.
- CrashOnce-v0: CartPole whose `step` raises once per run, the first time after
  ASYNCQL_TEST_CRASH_AFTER steps in the process that first creates $ASYNCQL_TEST_CRASH_FLAG.
- HangOnce-v0: like CrashOnce-v0, but `step` blocks forever instead of raising.
- NaNReward-v0: CartPole whose rewards turn NaN after ASYNCQL_TEST_NAN_AFTER steps.
- TextObservations-v0: CartPole whose observations are text, a space no network can take.
- SlowSteps-v0: every episode lasts SLOW_EPISODE_STEPS steps whatever the actions, and every step
  sleeps ASYNCQL_TEST_STEP_SECONDS: an evaluation of it takes as long as the test wants.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class CrashOnceEnv(CartPoleEnv):
    steps = 0  # per process, shared by this process's envs

    def step(self, action):  # type: ignore[override]
        CrashOnceEnv.steps += 1
        if CrashOnceEnv.steps > int(os.environ.get("ASYNCQL_TEST_CRASH_AFTER", "2000")):
            flag = Path(os.environ["ASYNCQL_TEST_CRASH_FLAG"])
            try:
                flag.open("x").close()  # exactly one process wins the right to crash
            except FileExistsError:
                pass
            else:
                raise RuntimeError("boom: the env exploded (test)")
        return super().step(action)


class HangOnceEnv(CartPoleEnv):
    steps = 0

    def step(self, action):  # type: ignore[override]
        HangOnceEnv.steps += 1
        if HangOnceEnv.steps > int(os.environ.get("ASYNCQL_TEST_CRASH_AFTER", "2000")):
            try:
                Path(os.environ["ASYNCQL_TEST_CRASH_FLAG"]).open("x").close()
            except FileExistsError:
                pass
            else:
                while True:
                    time.sleep(1)  # stuck, the way a wedged simulator is
        return super().step(action)


class NaNRewardEnv(CartPoleEnv):
    steps = 0

    def step(self, action):  # type: ignore[override]
        obs, reward, terminated, truncated, info = super().step(action)
        NaNRewardEnv.steps += 1
        if NaNRewardEnv.steps > int(os.environ.get("ASYNCQL_TEST_NAN_AFTER", "1500")):
            reward = float("nan")
        return obs, reward, terminated, truncated, info


gym.register(id="CrashOnce-v0", entry_point=CrashOnceEnv, max_episode_steps=500)
gym.register(id="HangOnce-v0", entry_point=HangOnceEnv, max_episode_steps=500)
gym.register(id="NaNReward-v0", entry_point=NaNRewardEnv, max_episode_steps=500)


class TextObservationsEnv(CartPoleEnv):
    def __init__(self, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.observation_space = gym.spaces.Text(max_length=8)

    def reset(self, **kwargs):  # type: ignore[no-untyped-def]
        super().reset(**kwargs)
        return "start", {}

    def step(self, action):  # type: ignore[override]
        _, reward, terminated, truncated, info = super().step(action)
        return "step", reward, terminated, truncated, info


gym.register("TextObservations-v0", entry_point=TextObservationsEnv, max_episode_steps=50)


SLOW_EPISODE_STEPS = 200


class SlowStepsEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (4,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.t = 0

    def reset(self, *, seed=None, options=None):  # type: ignore[no-untyped-def]
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample() * 0.0, {}

    def step(self, action):  # type: ignore[no-untyped-def]
        time.sleep(float(os.environ.get("ASYNCQL_TEST_STEP_SECONDS", "0.01")))
        self.t += 1
        return self.observation_space.sample() * 0.0, 1.0, self.t >= SLOW_EPISODE_STEPS, False, {}


gym.register("SlowSteps-v0", entry_point=SlowStepsEnv)

"""Deliberately broken envs for fault tests, registered on import.

Use them as `env=gym env.id=broken_envs:<Id>` with this directory on PYTHONPATH; gymnasium
imports the module in every process, like a user's own env package.
- CrashOnce-v0: CartPole whose `step` raises once per run, the first time after
  ASYNCQL_TEST_CRASH_AFTER steps in the process that first creates $ASYNCQL_TEST_CRASH_FLAG.
- HangOnce-v0: like CrashOnce-v0, but `step` blocks forever instead of raising.
- NaNReward-v0: CartPole whose rewards turn NaN after ASYNCQL_TEST_NAN_AFTER steps.
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

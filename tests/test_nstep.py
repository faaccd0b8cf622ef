"""n-step transitions: NStepAccumulator against a brute-force reference, and an actor on a real
CartPole vector env (same-step autoreset) checked against the recorded trajectory and physics.
"""

from __future__ import annotations

import math
import queue

import numpy as np
import pytest

from asyncql_cli.algo.exploration import apex_epsilons, linear_epsilon
from asyncql_cli.algo.networks import build_network, num_parameters
from asyncql_cli.algo.nstep import NStepAccumulator
from asyncql_cli.config.schema import ActorConfig, EnvConfig, ExplorationConfig, NetworkConfig
from asyncql_cli.envs.make import EnvSpec
from asyncql_cli.replay.transitions import ReplayStorage
from asyncql_cli.shm.counters import Counters
from asyncql_cli.shm.params import ParameterStore
from asyncql_cli.workers.actor import Actor, ActorSettings

GAMMA = 0.9


def reference_transitions(steps: list[dict], n: int, gamma: float) -> list[tuple]:
    """Brute force, looking forward from every step: the transition that starts at step t of env e
    sums rewards until n steps have passed or its episode ends, whichever comes first; it is due
    at that step u (never later) and is not due yet if u is past the recorded steps.

    `steps[u]` holds arrays over envs: obs, action, reward, true_next (the real next observation,
    the final one at an episode end), terminated, truncated.
    Returns (due_step, env, t, obs, action, return, next_obs, discount), sorted by (due_step, env, t).
    """
    out = []
    num_envs = len(steps[0]["action"]) if steps else 0
    for e in range(num_envs):
        for t in range(len(steps)):
            ret = 0.0
            for k in range(1, n + 1):
                u = t + k - 1
                if u >= len(steps):
                    break
                ret += gamma ** (k - 1) * float(steps[u]["reward"][e])
                terminated, truncated = bool(steps[u]["terminated"][e]), bool(steps[u]["truncated"][e])
                if terminated or truncated or k == n:
                    discount = 0.0 if terminated else gamma**k
                    out.append((u, e, t, steps[t]["obs"][e], int(steps[t]["action"][e]), ret,
                                steps[u]["true_next"][e], discount))
                    break
                # an episode end before step u would have stopped the loop: no crossing possible
    return sorted(out, key=lambda row: (row[0], row[1], row[2]))


def scripted_steps(episodes: dict[int, list[tuple[int, str]]], extra_steps: int, seed: int) -> list[dict]:
    """Steps of len(episodes) envs following each env's list of (length, how it ends), then
    `extra_steps` more steps of an unfinished episode. obs = [env, episode, step in episode]."""
    rng = np.random.default_rng(seed)
    num_envs = len(episodes)
    per_env = []
    for e in range(num_envs):
        rows = []
        for ep, (length, end) in enumerate(episodes[e] + [(extra_steps, "open")]):
            for i in range(length):
                last = i == length - 1
                rows.append({
                    "obs": np.array([e, ep, i], dtype=np.float64),
                    "true_next": np.array([e, ep, i + 1], dtype=np.float64),
                    "terminated": last and end in ("term", "both"),
                    "truncated": last and end in ("trunc", "both"),
                })
        per_env.append(rows)
    total = len(per_env[0])
    assert all(len(rows) == total for rows in per_env)
    steps = []
    for u in range(total):
        steps.append({
            "obs": np.stack([per_env[e][u]["obs"] for e in range(num_envs)]),
            "action": rng.integers(0, 5, size=num_envs),
            "reward": rng.normal(size=num_envs).round(3),
            "true_next": np.stack([per_env[e][u]["true_next"] for e in range(num_envs)]),
            "terminated": np.array([per_env[e][u]["terminated"] for e in range(num_envs)]),
            "truncated": np.array([per_env[e][u]["truncated"] for e in range(num_envs)]),
        })
    return steps


def run_accumulator(steps: list[dict], n: int, gamma: float) -> list[tuple]:
    """Push every step; returns (push index, obs, action, return, next_obs, discount) in emission order."""
    acc = NStepAccumulator(len(steps[0]["action"]), n, gamma)
    out = []
    for u, s in enumerate(steps):
        for obs, action, ret, next_obs, discount in acc.push(
            s["obs"], s["action"], s["reward"], s["true_next"], s["terminated"], s["truncated"]
        ):
            out.append((u, obs, action, ret, next_obs, discount))
    return out


def assert_same_transitions(got: list[tuple], expected: list[tuple]) -> None:
    assert len(got) == len(expected)
    for (u, obs, action, ret, next_obs, discount), (due, _, _, e_obs, e_action, e_ret, e_next, e_disc) in zip(
        got, expected
    ):
        assert u == due
        np.testing.assert_array_equal(obs, e_obs)
        assert action == e_action
        assert ret == pytest.approx(e_ret, rel=1e-6, abs=1e-6)
        np.testing.assert_array_equal(next_obs, e_next)
        assert discount == pytest.approx(e_disc, rel=1e-6, abs=0.0)


# ------------------------------------------------------------- accumulator alone


def test_hand_computed_three_step_returns():
    """One env, rewards 1, 2, 3, 4, terminated after the 4th step; then 2 steps truncated."""
    obs = [np.array([float(i)]) for i in range(8)]
    acc = NStepAccumulator(1, 3, GAMMA)
    out = []
    script = [(1.0, False, False), (2.0, False, False), (3.0, False, False), (4.0, True, False),
              (5.0, False, False), (6.0, False, True)]
    for i, (reward, term, trunc) in enumerate(script):
        emitted = acc.push(obs[i][None], np.array([i]), np.array([reward]), obs[i + 1][None],
                           np.array([term]), np.array([trunc]))
        out.append(emitted)
    assert [len(o) for o in out] == [0, 0, 1, 3, 0, 2]
    (first,) = out[2]
    assert first[1] == 0 and first[2] == pytest.approx(1 + 0.9 * 2 + 0.81 * 3)  # 5.23
    assert first[3][0] == 3.0 and first[4] == pytest.approx(0.729)
    returns = [t[2] for t in out[3]]
    assert returns == pytest.approx([2 + 0.9 * 3 + 0.81 * 4, 3 + 0.9 * 4, 4.0])  # 7.94, 6.6, 4
    assert [t[1] for t in out[3]] == [1, 2, 3]
    assert all(t[3][0] == 4.0 and t[4] == 0.0 for t in out[3])  # terminal: no bootstrap
    # truncated after 2 steps: bootstrap from the true last observation with gamma^k
    assert [t[2] for t in out[5]] == pytest.approx([5 + 0.9 * 6, 6.0])
    assert [t[4] for t in out[5]] == pytest.approx([0.81, 0.9])
    assert all(t[3][0] == 6.0 for t in out[5])


EPISODES = {
    0: [(2, "term"), (5, "trunc"), (5, "term")],  # shorter than n, then truncated, then terminated
    1: [(1, "trunc"), (4, "term"), (3, "trunc"), (4, "trunc")],  # a one-step episode; exactly n
    2: [(7, "both"), (5, "term")],  # terminated and truncated at once counts as terminated
}


@pytest.mark.parametrize("n", [1, 3])
def test_accumulator_matches_brute_force_reference(n):
    steps = scripted_steps(EPISODES, extra_steps=0, seed=n)
    got = run_accumulator(steps, n, GAMMA)
    expected = reference_transitions(steps, n, GAMMA)
    assert_same_transitions(got, expected)
    # Every episode ended on the last step: one transition per env step, none left behind.
    assert len(got) == len(steps) * 3
    for _, obs, _, _, next_obs, _ in got:
        assert obs[0] == next_obs[0] and obs[1] == next_obs[1], "transition crosses an episode end"
        assert 1 <= next_obs[2] - obs[2] <= n


@pytest.mark.parametrize("n", [1, 3])
def test_unfinished_episodes_hold_back_only_their_last_steps(n):
    extra = 5
    steps = scripted_steps(EPISODES, extra_steps=extra, seed=10 + n)
    got = run_accumulator(steps, n, GAMMA)
    assert_same_transitions(got, reference_transitions(steps, n, GAMMA))
    assert len(got) == len(steps) * 3 - 3 * (n - 1)  # n - 1 steps of each open episode are pending


# ------------------------------------------------------------- real env through an actor


class RecordingEnvs:
    """Wraps the actor's vector env and records what it really returned at every step."""

    def __init__(self, envs, first_obs: np.ndarray):
        self.envs = envs
        self.obs = first_obs.copy()
        self.steps: list[dict] = []

    def step(self, actions):
        next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
        done = terminated | truncated
        final = {int(e): np.array(info["final_obs"][e]) for e in np.flatnonzero(done)}
        true_next = next_obs.copy()
        for e, value in final.items():
            true_next[e] = value
        self.steps.append({
            "obs": self.obs.copy(), "action": np.array(actions).copy(), "reward": rewards.copy(),
            "next_obs": next_obs.copy(), "true_next": true_next, "final_obs": final,
            "terminated": terminated.copy(), "truncated": truncated.copy(),
        })
        self.obs = next_obs.copy()
        return next_obs, rewards, terminated, truncated, info

    def close(self):
        self.envs.close()


def run_recorded(actor: Actor, steps: int) -> list[dict]:
    """Step `actor` with its vector env recorded; flush and close it; return the record."""
    recorder = RecordingEnvs(actor.envs, actor.obs)
    actor.envs = recorder
    for _ in range(steps):
        actor.step()
    actor.flush()
    actor.close()
    return recorder.steps


def cartpole_next_state(state: np.ndarray, action: int) -> np.ndarray:
    """CartPole-v1 dynamics (Barto, Sutton & Anderson 1983; euler step, tau = 0.02)."""
    gravity, masscart, masspole, half_length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass, polemass_length = masscart + masspole, masspole * half_length
    x, x_dot, theta, theta_dot = (float(v) for v in state)
    force = force_mag if action == 1 else -force_mag
    cos, sin = math.cos(theta), math.sin(theta)
    temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
    theta_acc = (gravity * sin - cos * temp) / (half_length * (4.0 / 3.0 - masspole * cos**2 / total_mass))
    x_acc = temp - polemass_length * theta_acc * cos / total_mass
    return np.array([x + tau * x_dot, x_dot + tau * x_acc, theta + tau * theta_dot, theta_dot + tau * theta_acc])


def cartpole_out_of_bounds(state: np.ndarray) -> bool:
    return abs(float(state[0])) > 2.4 or abs(float(state[2])) > 12 * 2 * math.pi / 360


def run_actor(n_step: int, actor_steps: int, envs: int = 3, max_episode_steps: int = 20):
    network = NetworkConfig(name="mlp", hidden=[8], dueling=False)
    env = EnvSpec(env=EnvConfig(id="CartPole-v1", kwargs={}, max_episode_steps=max_episode_steps),
                  obs_shape=(4,), obs_dtype="float32", num_actions=2)
    settings = ActorSettings(
        actor_id=0, num_actors=1, envs_per_actor=envs, env=env, network=network,
        exploration=ExplorationConfig(schedule="apex", apex_base=0.4, apex_alpha=7.0, linear_start=1.0,
                                      linear_end=0.01, linear_steps=1000),
        acting=ActorConfig(write_batch=16, weight_sync_steps=100, max_update_debt=None),
        gamma=GAMMA, n_step=n_step, seed=123, replay_ratio=1.0, learning_starts=0, max_update_debt=None,
    )
    storage = ReplayStorage(4096, 1, settings.acting.write_batch, (4,))
    params = ParameterStore(num_parameters(build_network(network, (4,), 2)))  # never published: random actions
    steps = run_recorded(Actor(settings, storage, params, Counters(1), queue.SimpleQueue()), actor_steps)
    count = storage.cursor(0)
    assert count < storage.capacity
    fields = ("obs", "action", "reward", "next_obs", "discount")
    rows = {name: getattr(storage, name)[:count].clone() for name in fields}
    return steps, rows


@pytest.mark.parametrize("n", [1, 3])
def test_actor_on_cartpole_matches_the_recorded_trajectory(n):
    steps, rows = run_actor(n, actor_steps=100)
    terminated = sum(int(s["terminated"].sum()) for s in steps)
    truncated = sum(int((s["truncated"] & ~s["terminated"]).sum()) for s in steps)
    assert terminated > 0 and truncated > 0, "the run should see both kinds of episode end"

    expected = reference_transitions(steps, n, GAMMA)
    assert rows["action"].shape[0] == len(expected)
    open_steps = 0  # steps of each env's last, unfinished episode
    for e in range(3):
        ends = [u for u, s in enumerate(steps) if s["terminated"][e] or s["truncated"][e]]
        open_steps += min(n - 1, len(steps) - 1 - (ends[-1] if ends else -1))
    assert len(expected) == len(steps) * 3 - open_steps

    for i, (due, e, _, obs, action, ret, next_obs, discount) in enumerate(expected):
        np.testing.assert_array_equal(rows["obs"][i].numpy(), obs)
        assert int(rows["action"][i]) == action
        assert float(rows["reward"][i]) == pytest.approx(ret, rel=1e-6)
        np.testing.assert_array_equal(rows["next_obs"][i].numpy(), next_obs)
        assert float(rows["discount"][i]) == pytest.approx(discount, rel=1e-6)
        step = steps[due]
        if step["terminated"][e] or step["truncated"][e]:
            # The episode ended inside this transition: bootstrap (if at all) from the true last
            # observation that the env reported, not from the first one of the next episode.
            np.testing.assert_array_equal(rows["next_obs"][i].numpy(), step["final_obs"][e])
            assert not np.array_equal(rows["next_obs"][i].numpy(), step["next_obs"][e])

    # Every stored (obs, action) is a pair the env really saw in one step, so no transition
    # joins a reset observation with the action that ended the previous episode.
    for i in range(rows["action"].shape[0]):
        matches = [(u, e) for u, s in enumerate(steps) for e in range(3)
                   if np.array_equal(s["obs"][e], rows["obs"][i].numpy())]
        assert len(matches) == 1
        u, e = matches[0]
        assert int(rows["action"][i]) == int(steps[u]["action"][e])


def test_actor_one_step_transitions_obey_cartpole_physics():
    """Checked against the equations of motion alone, not against anything the env recorded."""
    _, rows = run_actor(1, actor_steps=100)
    count = rows["action"].shape[0]
    assert count == 300
    ends = 0
    for i in range(count):
        obs, next_obs = rows["obs"][i].double().numpy(), rows["next_obs"][i].double().numpy()
        np.testing.assert_allclose(next_obs, cartpole_next_state(obs, int(rows["action"][i])), rtol=1e-5, atol=1e-5)
        assert float(rows["reward"][i]) == 1.0
        terminal = float(rows["discount"][i]) == 0.0
        assert terminal == cartpole_out_of_bounds(next_obs)
        if not terminal:
            assert float(rows["discount"][i]) == pytest.approx(GAMMA)
        ends += terminal
    assert ends > 0


# ------------------------------------------------------------- exploration schedules


@pytest.mark.parametrize("num_slots", [2, 5, 8, 16])
def test_apex_epsilons(num_slots):
    eps = apex_epsilons(num_slots, 0.4, 7.0)
    assert eps.shape == (num_slots,)
    for i in range(num_slots):
        assert eps[i] == pytest.approx(math.pow(0.4, 1 + 7 * i / (num_slots - 1)), rel=1e-12)
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4**8)
    assert np.all(np.diff(eps) < 0)


def test_apex_epsilon_of_a_single_slot_is_the_base():
    assert apex_epsilons(1, 0.4, 7.0).tolist() == [0.4]


def test_linear_epsilon_endpoints():
    assert linear_epsilon(0, 1.0, 0.05, 1000) == pytest.approx(1.0)
    assert linear_epsilon(500, 1.0, 0.05, 1000) == pytest.approx(0.525)
    assert linear_epsilon(1000, 1.0, 0.05, 1000) == pytest.approx(0.05)
    assert linear_epsilon(10**6, 1.0, 0.05, 1000) == pytest.approx(0.05)



def one_env_actor(schedule: str, num_actors: int = 1, envs: int = 1) -> Actor:
    network = NetworkConfig(name="mlp", hidden=[8], dueling=False)
    env = EnvSpec(env=EnvConfig(id="CartPole-v1", kwargs={}), obs_shape=(4,), obs_dtype="float32", num_actions=2)
    settings = ActorSettings(
        actor_id=0, num_actors=num_actors, envs_per_actor=envs, env=env, network=network,
        exploration=ExplorationConfig(schedule=schedule, apex_base=0.4, apex_alpha=7.0, linear_start=1.0,
                                      linear_end=0.05, linear_steps=100),
        acting=ActorConfig(write_batch=16, weight_sync_steps=100, max_update_debt=None),
        gamma=GAMMA, n_step=1, seed=5, replay_ratio=1.0, learning_starts=0, max_update_debt=None,
    )
    storage = ReplayStorage(4096, num_actors, settings.acting.write_batch, (4,))
    params = ParameterStore(num_parameters(build_network(network, (4,), 2)))
    return Actor(settings, storage, params, Counters(num_actors), queue.SimpleQueue())


def test_apex_with_a_single_env_slot_anneals_linearly():
    """One env in the whole run: Ape-X would hold it at apex_base (0.4) for ever; it anneals
    from linear_start to linear_end instead."""
    actor = one_env_actor("apex")
    seen = [float(actor.epsilons()[0])]
    for _ in range(150):
        actor.step()
        seen.append(float(actor.epsilons()[0]))
    actor.close()
    assert seen[0] == pytest.approx(1.0)
    assert all(later <= earlier for earlier, later in zip(seen, seen[1:]))
    assert seen[-1] == pytest.approx(0.05)


def test_apex_with_several_env_slots_keeps_its_fixed_epsilons():
    actor = one_env_actor("apex", envs=2)
    before = actor.epsilons().copy()
    for _ in range(20):
        actor.step()
    actor.close()
    np.testing.assert_allclose(before, apex_epsilons(2, 0.4, 7.0))
    np.testing.assert_array_equal(actor.epsilons(), before)


def test_an_actor_reports_its_slot_epsilons_and_each_episode_with_its_slot():
    actor = one_env_actor("apex", num_actors=2, envs=2)
    for _ in range(100):
        actor.step()
    actor.close()
    messages = []
    while not actor.stats.empty():
        messages.append(actor.stats.get())
    assert messages[0] == ("epsilon", 0, 0, pytest.approx(apex_epsilons(4, 0.4, 7.0)[:2].tolist()))
    assert [m for m in messages if m[0] == "epsilon"] == messages[:1]  # fixed epsilons: sent once
    episodes = [m for m in messages if m[0] == "episode"]
    assert episodes and {m[5] for m in episodes} <= {0, 1}
    for m in episodes:
        assert m[4] == pytest.approx(apex_epsilons(4, 0.4, 7.0)[m[5]])


def test_an_annealing_actor_reports_its_epsilon_again_once_per_sync_interval():
    actor = one_env_actor("linear")
    for _ in range(250):
        actor.step()
    actor.close()
    messages = []
    while not actor.stats.empty():
        messages.append(actor.stats.get())
    sent = [m[3][0] for m in messages if m[0] == "epsilon"]
    assert len(sent) == 2 and sent[0] == pytest.approx(1.0) and sent[1] == pytest.approx(0.05)

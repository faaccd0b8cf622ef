"""What the user sees in TensorBoard: the greedy training curve beside every episode, each env
slot's epsilon, and the HParams columns led by what was swept (read back from the event file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asyncql_cli.runtime.record import MAIN_HPARAMS, job_override_keys, ordered_hparams
from asyncql_cli.runtime.reporting import Reporter


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _report(run_dir: Path, slot_epsilons: list[float], episodes: list[tuple[float, float, int]]) -> Reporter:
    reporter = Reporter(str(run_dir), total_env_steps=1000, mode="none", greedy_epsilon=0.05)
    reporter.epsilons(0, slot_epsilons, 0)
    for step, (ret, epsilon, slot) in enumerate(episodes, start=1):
        reporter.episode(ret, 10, epsilon, step, slot)
    reporter.close()
    return reporter


def test_episode_return_keeps_the_greedy_slots_and_episode_return_all_every_episode(tmp_path):
    reporter = _report(tmp_path, [0.4, 0.01], [(10.0, 0.4, 0), (200.0, 0.01, 1), (12.0, 0.4, 0)])
    scalars = _scalars(tmp_path)
    assert scalars["train/episode_return"] == [(2, 200.0)]
    assert scalars["train/episode_return_all"] == [(1, 10.0), (2, 200.0), (3, 12.0)]
    assert scalars["exploration/epsilon/slot0"] == [(0, pytest.approx(0.4))]
    assert scalars["exploration/epsilon/slot1"] == [(0, pytest.approx(0.01))]
    assert reporter.recent_return == 200.0


def test_without_a_greedy_slot_the_lowest_epsilon_slots_make_the_curve(tmp_path):
    _report(tmp_path, [0.5, 0.1, 0.1], [(10.0, 0.5, 0), (50.0, 0.1, 1), (60.0, 0.1, 2)])
    scalars = _scalars(tmp_path)
    assert [value for _, value in scalars["train/episode_return"]] == [50.0, 60.0]
    assert len(scalars["train/episode_return_all"]) == 3


def test_an_annealed_slot_joins_the_curve_once_it_is_greedy(tmp_path):
    reporter = Reporter(str(tmp_path), total_env_steps=1000, mode="none", greedy_epsilon=0.05)
    reporter.epsilons(0, [0.3, 0.01], 0)
    reporter.episode(1.0, 10, 0.3, 1, 0)
    reporter.epsilons(0, [0.05], 2)
    reporter.episode(2.0, 10, 0.05, 3, 0)
    reporter.close()
    assert _scalars(tmp_path)["train/episode_return"] == [(3, 2.0)]


def test_hparams_lead_with_the_overrides_then_the_main_keys():
    flat = {"actor.max_update_debt": 1000, "algo.adam_eps": 1e-8, "algo.gamma": 0.99, "algo.lr": 1e-3,
            "buffer.name": "uniform", "env.id": "CartPole-v1", "seed": 0, "train.greedy_epsilon": 0.05}
    ordered = ordered_hparams(flat, ["train.greedy_epsilon", "buffer", "env", "unknown.key"])
    main = [key for key in MAIN_HPARAMS if key in flat and key != "buffer.name"]
    assert list(ordered) == ["train.greedy_epsilon", "buffer.name", "env.id", *main,
                             "actor.max_update_debt", "algo.adam_eps"]
    assert ordered == flat


def test_the_override_keys_come_from_the_jobs_hydra_overrides(tmp_path):
    assert job_override_keys(tmp_path) == []
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- algo.lr=0.0003\n- seed=1\n- +env.kwargs.sutton_barto_reward=true\n"
        "- hydra/launcher=joblib\n- buffer=prioritized\n")
    assert job_override_keys(tmp_path) == ["algo.lr", "seed", "env.kwargs.sutton_barto_reward", "buffer"]


@pytest.mark.slow
def test_a_one_env_apex_run_anneals_its_epsilon_and_logs_it(tmp_path):
    """parallelism=serial with one env: the apex schedule falls back to linear, so the slot's
    epsilon, read back from TensorBoard, falls from linear_start to linear_end."""
    run_dir = tmp_path / "run"
    result = run_cli("train", "parallelism=serial", "parallelism.envs_per_actor=1", "exploration.schedule=apex",
                     "exploration.linear_steps=1000", "exploration.linear_end=0.05", "actor.weight_sync_steps=100",
                     "train.total_env_steps=1500", "train.learning_starts=200", "eval.interval_seconds=1000",
                     "eval.episodes=1", "eval.confirm_episodes=0", "train.progress=none",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=480)
    assert result.returncode == 0, result.stderr[-2000:]
    scalars = _scalars(run_dir)
    epsilons = [value for _, value in scalars["exploration/epsilon/slot0"]]
    assert epsilons[0] == pytest.approx(1.0) and epsilons[-1] == pytest.approx(0.05)
    assert epsilons == sorted(epsilons, reverse=True) and len(epsilons) >= 5
    assert "exploration/epsilon/slot1" not in scalars
    assert scalars["train/episode_return_all"]

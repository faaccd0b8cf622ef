"""Sweeps (`asyncql train -m`): complete job dirs, the sweep summary, failed jobs recorded
while the sweep goes on, parallel jobs under the joblib launcher, the core budget, Ctrl-C,
TensorBoard hparams per job, and an Optuna search from conf/hparams_search/.

The real sweeps are tiny (1000 env steps a job, one actor with 4 envs, small network) and
throttle the actors to the learner (`actor.max_update_debt`), so every job gets a greedy
evaluation even on two busy cores."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import compose_config, run_cli
from omegaconf import OmegaConf, open_dict, read_write
from proc_utils import descendants, wait_for

from asyncql_cli.cli import sweep_budget, sweep_callback, sweep_naming, sweep_table
from asyncql_cli.errors import BadInput
from asyncql_cli.runtime.record import MAIN_HPARAMS

TINY = [
    "train.total_env_steps=1000", "train.learning_starts=128", "parallelism.num_actors=1",
    "parallelism.envs_per_actor=4", "actor.max_update_debt=20", "algo.batch_size=32",
    "network.hidden=[32,32]", "eval.interval_seconds=1", "eval.episodes=1", "train.progress=none",
]
HAS_OPTUNA = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None


def _sweep_dir(tmp_path: Path) -> Path:
    return tmp_path / "sweep"


def _rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / sweep_table.SWEEP_CSV, newline="") as f:
        return list(csv.DictReader(f))


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


def _hparams(job_dir: Path) -> tuple[Any, Any, dict[str, float]]:
    """(experiment, session start info, final hparams/* scalars) of a job's event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(job_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    scalars = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]
               if tag.startswith("hparams/")}
    return experiment, start, scalars


def _assert_complete_job(job_dir: Path) -> dict[str, Any]:
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (job_dir / ".hydra" / name).is_file(), name
    assert list(job_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (job_dir / "checkpoints" / "last.pt").is_file()
    assert (job_dir / "checkpoints" / "best.pt").is_file()
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "budget" and summary["error"] is None
    assert summary["best_eval_return"] is not None
    assert summary["best_eval_wall_seconds"] > 0
    return summary


# ------------------------------------------------------------------------- unit: names
def test_job_dirname_carries_env_and_swept_values(monkeypatch: pytest.MonkeyPatch) -> None:
    root = OmegaConf.create({
        "env": {"id": "my_pkg.envs:Foo/Bar-v0"},
        "hydra": {"job": {"num": 3, "config": {"override_dirname": {"exclude_keys": ["env.id"]}}},
                  "overrides": {"task": ["seed=1", "algo.lr=0.0006466422717414558",
                                         "env.id=my_pkg.envs:Foo/Bar-v0", "train.total_env_steps=100"]}},
    })
    monkeypatch.setattr(sweep_naming, "swept", frozenset({"seed", "algo.lr", "env.id"}))
    assert sweep_naming.job_dirname(root) == "3_my_pkg.envs_Foo_Bar-v0_algo.lr=0.0006466,seed=1"
    monkeypatch.setattr(sweep_naming, "swept", None)  # unknown sweep: every override but excluded ones
    expected = "3_my_pkg.envs_Foo_Bar-v0_algo.lr=0.0006466,seed=1,train.total_env_steps=100"
    assert sweep_naming.job_dirname(root) == expected
    monkeypatch.setattr(sweep_naming, "swept", frozenset())
    assert sweep_naming.job_dirname(root) == "3_my_pkg.envs_Foo_Bar-v0"
    root.hydra.overrides.task = [f"algo.lr={i}e-4" for i in range(100)]
    monkeypatch.setattr(sweep_naming, "swept", None)
    assert len(sweep_naming.job_dirname(root)) == sweep_naming.MAX_NAME


def test_swept_keys_from_command_line_and_search_space() -> None:
    cfg = compose_config(["hparams_search=cartpole_optuna"] if HAS_OPTUNA else [], return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.overrides.task = ["seed=0,1", "train.total_env_steps=1000", "algo.batch_size=32"]
    keys = sweep_naming.swept_keys(cfg)
    assert "seed" in keys and "train.total_env_steps" not in keys
    assert "algo.batch_size" not in keys  # fixed on the command line: out of the search space
    if HAS_OPTUNA:
        assert {"algo.lr", "algo.gamma", "exploration.apex_base"} <= keys


# ------------------------------------------------------------------- unit: core budget
def _joblib_cfg(n_jobs: int, task: list[str], core_budget: str = "enforce") -> Any:
    cfg = compose_config(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}",
                          f"hydra.callbacks.asyncql_sweep.core_budget={core_budget}"],
                         return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.overrides.task = task
        cfg.hydra.sweep.dir = "unused"
    return cfg


def test_core_budget_lowers_n_jobs_to_fit_the_cores(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sweep_callback, "available_cores", lambda: 8)
    # up to 2 actors + 1 learner + 1 evaluator per job: 2 jobs at once on 8 cores
    cfg = _joblib_cfg(8, ["seed=0,1,2,3", "parallelism.num_actors=1,2"])
    callback = sweep_callback.SweepCallback(core_budget="enforce")
    try:
        with caplog.at_level("WARNING", logger="asyncql"):
            callback.on_multirun_start(cfg)
    finally:
        callback._restore_signal_handlers()
    assert cfg.hydra.launcher.n_jobs == 2
    assert "lowered hydra.launcher.n_jobs to 2" in caplog.text and "8 cores" in caplog.text
    fits = _joblib_cfg(8, ["seed=0,1", "parallelism.num_actors=2"])  # only 2 jobs: 2 x 4 <= 8
    callback.on_multirun_start(fits)
    callback._restore_signal_handlers()
    assert fits.hydra.launcher.n_jobs == 8


def test_core_budget_warn_keeps_n_jobs_and_serial_counts_one(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sweep_callback, "available_cores", lambda: 2)
    cfg = _joblib_cfg(-1, ["seed=0,1"], core_budget="warn")  # -1: all cores, 2 x (2 + 1 + 1) > 2
    callback = sweep_callback.SweepCallback(core_budget="warn")
    try:
        with caplog.at_level("WARNING", logger="asyncql"):
            callback.on_multirun_start(cfg)
    finally:
        callback._restore_signal_handlers()
    assert cfg.hydra.launcher.n_jobs == -1 and "oversubscribed" in caplog.text
    assert sweep_budget.processes_per_job(compose_config(["parallelism=serial"], return_hydra_config=True)) == 1


# --------------------------------------------------------- unit: the task in a sweep
def _multirun_task(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, train: Any, optuna: bool = False) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    import asyncql_cli.runtime.run
    from asyncql_cli.cli import train_task

    cfg = compose_config([], return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path / "0_job")
        if optuna:
            cfg.hydra.sweeper = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}
    (tmp_path / "0_job").mkdir()
    monkeypatch.setattr(asyncql_cli.runtime.run, "train", train)
    HydraConfig.instance().set_config(cfg)
    try:
        task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        return train_task.train_task(task_cfg)
    finally:
        HydraConfig.instance().cfg = None


def test_failed_job_in_a_sweep_returns_its_code_and_records_the_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def crash(cfg: Any, run_dir: str) -> int:
        raise RuntimeError("boom in the job")

    assert _multirun_task(monkeypatch, tmp_path, crash) == 1
    summary = json.loads((tmp_path / "0_job" / "summary.json").read_text())
    assert summary["exit_reason"] == "error" and summary["error"] == "RuntimeError: boom in the job"

    def bad(cfg: Any, run_dir: str) -> int:
        raise BadInput("env.id='Nope-v0': cannot make this env")

    (tmp_path / "b").mkdir()
    assert _multirun_task(monkeypatch, tmp_path / "b", bad) == 2
    summary = json.loads((tmp_path / "b" / "0_job" / "summary.json").read_text())
    assert summary["exit_reason"] == "bad_input" and "Nope-v0" in summary["error"]


def test_optuna_job_returns_the_best_eval_return_or_its_failure(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def finished(cfg: Any, run_dir: str) -> int:
        Path(run_dir, "summary.json").write_text(json.dumps(
            {"best_eval_return": 123.5, "exit_reason": "budget", "error": None}))
        return 0

    assert _multirun_task(monkeypatch, tmp_path, finished, optuna=True) == 123.5

    def crash(cfg: Any, run_dir: str) -> int:
        raise RuntimeError("boom")

    (tmp_path / "b").mkdir()
    result = _multirun_task(monkeypatch, tmp_path / "b", crash, optuna=True)
    assert isinstance(result, str) and "error" in result and "boom" in result  # Optuna: a failed trial


# ------------------------------------------------------------- unit: the summary table
def test_summary_sorts_best_first_and_lists_failures(tmp_path: Path) -> None:
    jobs = {
        "0_CartPole-v1_seed=0": {"best_eval_return": 20.0, "best_eval_env_steps": 900, "exit_reason": "budget"},
        "1_CartPole-v1_seed=1": {"best_eval_return": 50.0, "best_eval_confirmed": False, "best_eval_env_steps": 700,
                                 "exit_reason": "budget"},
        "2_CartPole-v1_seed=2": {"best_eval_return": None, "exit_reason": "bad_input", "error": "env.id: nope"},
        "3_CartPole-v1_seed=3": None,  # died without a summary
        "4_CartPole-v1_seed=4": {"best_eval_return": 50.0, "best_eval_confirmed": True, "best_eval_env_steps": 500,
                                 "exit_reason": "solved"},
    }
    for name, summary in jobs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        seed = name.split("=")[1]
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n- algo.lr=0.001\n")
        if summary is not None:
            (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    rows = sweep_table.write_sweep_summary(tmp_path, show=False)
    assert [row["job"] for row in rows] == [4, 1, 0, 2, 3]  # ties: fewer steps to best first
    written = _rows(tmp_path)
    assert [r["job"] for r in written] == ["4", "1", "0", "2", "3"]
    assert written[0]["overrides"] == "seed=4"  # the common algo.lr=0.001 is left out
    assert written[0]["all_overrides"] == "seed=4 algo.lr=0.001"
    assert [r["best_eval_confirmed"] for r in written[:2]] == ["True", "False"]  # the column says which held
    assert written[3]["exit_reason"] == "bad_input" and written[3]["error"] == "env.id: nope"
    assert written[4]["exit_reason"] == "unknown" and "summary.json" in written[4]["error"]
    assert sweep_table.sweep_exit_code(rows) == 1
    assert sweep_table.sweep_exit_code(rows[:3]) == 0


# ------------------------------------------------------------------- real sweeps
@pytest.mark.slow
def test_two_job_sweep_makes_complete_job_dirs_summary_and_hparams(tmp_path: Path) -> None:
    sweep_dir = _sweep_dir(tmp_path)
    result = run_cli("train", "-m", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep_dir}",
                     cwd=tmp_path, timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = _job_dirs(sweep_dir)
    assert [p.name for p in jobs] == ["0_CartPole-v1_seed=0", "1_CartPole-v1_seed=1"]
    summaries = [_assert_complete_job(job) for job in jobs]
    rows = _rows(sweep_dir)
    assert len(rows) == 2 and {r["overrides"] for r in rows} == {"seed=0", "seed=1"}
    best = [float(r["best_eval_return"]) for r in rows]
    assert best == sorted(best, reverse=True) == sorted((s["best_eval_return"] for s in summaries), reverse=True)
    assert "asyncql sweep: 2 jobs" in result.stderr and sweep_table.SWEEP_CSV in result.stderr
    for job, summary in zip(jobs, summaries):
        experiment, start, scalars = _hparams(job)
        metric_tags = {m.name.tag for m in experiment.metric_infos}
        assert {"hparams/best_eval_return", "hparams/solved_wall_seconds"} <= metric_tags
        seed = int(job.name.rsplit("=", 1)[1])
        assert start.hparams["seed"].number_value == seed
        job_cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert start.hparams["algo.lr"].number_value == pytest.approx(job_cfg.algo.lr)
        assert scalars["hparams/best_eval_return"] == pytest.approx(summary["best_eval_return"])
        # the HParams columns lead with the job's overrides (the swept seed among them), then the main keys
        names = [info.name for info in experiment.hparam_infos]
        overridden = [str(o).split("=", 1)[0] for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
        assert "seed" in overridden and names[:len(overridden)] == overridden
        main = [key for key in MAIN_HPARAMS if key not in overridden]
        assert names[len(overridden):len(overridden) + len(main)] == main


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_workers_and_leaves_nothing(tmp_path: Path) -> None:
    sweep_dir = _sweep_dir(tmp_path)
    # 2 jobs x (1 actor + 1 learner) > 2 cores: allow it here (the budget would run them in turn)
    result = run_cli("train", "-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "hydra.callbacks.asyncql_sweep.core_budget=warn", *TINY,
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=150)  # fails on leftovers
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout and "oversubscribed" in result.stdout
    jobs = _job_dirs(sweep_dir)
    assert len(jobs) == 2
    for job in jobs:
        _assert_complete_job(job)
    pids = {re.search(r"main pid (\d+)", (job / "train.log").read_text()).group(1) for job in jobs}
    assert len(pids) == 2  # each job in its own worker process
    assert len(_rows(sweep_dir)) == 2


@pytest.mark.slow
def test_failing_job_is_listed_with_its_error_and_the_sweep_goes_on(tmp_path: Path) -> None:
    sweep_dir = _sweep_dir(tmp_path)
    result = run_cli("train", "-m", "env=gym", "env.id=NoSuchEnv-v0,CartPole-v1", *TINY,
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=150)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert [p.name for p in _job_dirs(sweep_dir)] == ["0_NoSuchEnv-v0", "1_CartPole-v1"]
    _assert_complete_job(sweep_dir / "1_CartPole-v1")
    failed = json.loads((sweep_dir / "0_NoSuchEnv-v0" / "summary.json").read_text())
    assert failed["exit_reason"] == "bad_input" and "NoSuchEnv" in failed["error"]
    rows = _rows(sweep_dir)
    assert [r["exit_reason"] for r in rows] == ["budget", "bad_input"]
    assert "NoSuchEnv" in rows[1]["error"] and "NoSuchEnv" in result.stderr


@pytest.mark.slow
def test_ctrl_c_stops_a_joblib_sweep_cleanly(tmp_path: Path) -> None:
    sweep_dir = _sweep_dir(tmp_path)
    args = ["seed=0,1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            "hydra.callbacks.asyncql_sweep.core_budget=warn", *TINY, "train.total_env_steps=1000000",
            f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "asyncql_cli", "train", "-m", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: sum(t == "asyncql:learner-0" for t in descendants(proc.pid).values()) == 2, 90)
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, output[-3000:]
    assert wait_for(lambda: not _group_alive(proc.pid), 5), "processes left behind"
    rows = {r["job"]: r for r in _rows(sweep_dir)}
    assert rows["0"]["exit_reason"] == rows["1"]["exit_reason"] == "interrupted"  # clean stops
    assert rows["2"]["exit_reason"] == "skipped"
    for job in ("0_CartPole-v1_seed=0", "1_CartPole-v1_seed=1"):
        assert (sweep_dir / job / "checkpoints" / "last.pt").is_file()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPTUNA, reason="needs the optuna extra (pip install 'asyncql[optuna]')")
def test_optuna_search_from_the_shipped_example(tmp_path: Path) -> None:
    sweep_dir = _sweep_dir(tmp_path)
    result = run_cli("train", "-m", "hparams_search=cartpole_optuna", "hydra.sweeper.n_trials=2",
                     "parallelism=serial", *TINY, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = _rows(sweep_dir)
    assert len(rows) == 2 and all(r["exit_reason"] == "budget" for r in rows)
    assert all("algo.lr=" in r["overrides"] for r in rows)  # sampled values, shown per trial
    assert all("algo.lr=" in p.name and "algo.batch_size" not in p.name for p in _job_dirs(sweep_dir))
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == pytest.approx(float(rows[0]["best_eval_return"]))

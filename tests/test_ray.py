"""`parallelism=ray` on a simulated three-node cluster (ray.cluster_utils.Cluster, one CPU each,
one with a fake GPU), every Ray process on 127.0.0.1, usage statistics off, Ray's files in the
test's temporary directory.

CartPole learns across the nodes (rows shipped, weights broadcast, the learner on the GPU node);
an actor process killed on a worker node is restarted, a removed node's agent is replaced, Ctrl-C
ends the run with 130 and a last checkpoint, and nothing of the run is left on any node; the run
then resumes. Bad input: an unreachable address, resources the cluster lacks, modes that cannot
span machines, Ray missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import bad_input_line, compose_config, run_cli
from proc_utils import descendants, start_train, wait_for
from ray_sockets import is_loopback, listening
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asyncql_cli.config.loading import load_config
from asyncql_cli.errors import BadInput
from asyncql_cli.procfs import cmdline

pytestmark = pytest.mark.slow

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_DEDUP_LOGS": "0", "RAY_worker_niceness": "0"}
MIB = 1 << 20
GUARD_SECONDS = 600.0  # a hang guard, not a speed bound: Ray starts slowly on a loaded machine
CONTRACT_TAGS = {"train/episode_return", "train/episode_length", "train/epsilon", "learner/loss", "learner/q_mean",
                 "learner/grad_norm", "eval/mean_return", "perf/env_steps_per_sec", "perf/updates_per_sec",
                 "replay/size", "actor/policy_lag"}
RAY_TAGS = {"ray/rows_shipped_per_sec", "ray/tick_ms", "ray/weight_broadcast_ms"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Three one-CPU nodes on loopback, the second with a (fake) GPU."""
    temp = tmp_path_factory.mktemp("r")  # short: Ray's socket paths must stay under 107 characters
    os.environ.update({**RAY_ENV, "RAY_TMPDIR": str(temp)})
    (temp / "ray").mkdir(exist_ok=True)
    from ray.cluster_utils import Cluster

    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * MIB, "memory": 1024 * MIB,
              "include_dashboard": False, "temp_dir": str(temp / "ray")}
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **common})
    gpu_node = made.add_node(num_cpus=1, num_gpus=1, **common)
    third = made.add_node(num_cpus=1, **common)
    made.wait_for_nodes(timeout=120)
    made.gpu_node_id, made.third = gpu_node.node_id, third
    yield made
    made.shutdown()


def _env(cluster: Any) -> dict[str, str]:
    return {**RAY_ENV, "RAY_TMPDIR": os.environ["RAY_TMPDIR"]}


def _args(cluster: Any, run_dir: Path, *extra: str) -> list[str]:
    return ["parallelism=ray", f"parallelism.address={cluster.address}", "parallelism.num_actors=3",
            "parallelism.envs_per_actor=4", "parallelism.learner_resources.GPU=1", "train.progress=plain",
            "eval.interval_seconds=2", "eval.confirm_episodes=50", "checkpoint.interval_seconds=2",
            "parallelism.weight_broadcast_seconds=0.25",
            f"hydra.run.dir={run_dir}", *extra]


def _run_processes() -> dict[int, str]:
    """Every process of an asyncql run on this machine (all simulated nodes): titles and agents."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            line = cmdline(int(entry))
            if line.startswith("asyncql:") or "NodeAgent" in line:
                found[int(entry)] = line
    return found


def _follow(proc: subprocess.Popen) -> list[str]:
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    return lines


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_cartpole_learns_across_three_nodes_on_loopback_only(cluster: Any, tmp_path: Path) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    run_dir = tmp_path / "run"
    proc = start_train(_args(cluster, run_dir, "train.total_env_steps=16000"), tmp_path, env=_env(cluster))
    lines = _follow(proc)
    assert wait_for(lambda: sum("started on Ray node" in line for line in lines) >= 3, GUARD_SECONDS), "".join(lines)
    pids = {os.getpid(), proc.pid, *descendants(os.getpid()), *descendants(proc.pid)}
    sockets = listening(pids)
    assert sockets, "no Ray listening socket found"
    assert all(is_loopback(address) for _, address, _ in sockets), sockets
    assert proc.wait(timeout=GUARD_SECONDS) == 0, "".join(lines)[-3000:]
    output = "".join(lines)
    assert f"node-0 (learner) started on Ray node {cluster.gpu_node_id[:12]}" in output  # learner_resources
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "budget" and summary["best_eval_return"] >= 150, summary
    for name in ("last.pt", "best.pt"):
        assert (run_dir / "checkpoints" / name).is_file()
    scalars = _scalars(run_dir)
    assert CONTRACT_TAGS | RAY_TAGS <= set(scalars), (CONTRACT_TAGS | RAY_TAGS) - set(scalars)
    returns = scalars["train/episode_return"]
    assert sum(returns[-20:]) / 20 > 2 * sum(returns[:20]) / 20, returns
    assert max(scalars["ray/rows_shipped_per_sec"]) > 0  # remote actors' rows reached the learner's node
    assert any(tag.startswith("actor/policy_lag/node-") for tag in scalars)
    assert wait_for(lambda: not _run_processes(), 60), _run_processes()
    assert set(os.listdir("/dev/shm")) <= shm_before


@pytest.fixture(scope="module")
def interrupted_run(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run in which an actor on a worker node is killed, then that node removed, then Ctrl-C."""
    cwd = tmp_path_factory.mktemp("faults")
    run_dir = cwd / "run"
    proc = start_train(_args(cluster, run_dir, "train.total_env_steps=10000000"), cwd, env=_env(cluster))
    lines = _follow(proc)
    assert wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists()
                    and sum("started on Ray node" in line for line in lines) >= 3, GUARD_SECONDS), "".join(lines)
    victim = next(pid for pid, title in _run_processes().items() if title.startswith("asyncql:actor-2"))
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: any("actor-2 died" in line for line in lines), GUARD_SECONDS), "".join(lines)[-3000:]
    cluster.remove_node(cluster.third)
    assert wait_for(lambda: any("restarted on Ray node" in line for line in lines), GUARD_SECONDS), \
        "".join(lines)[-3000:]
    restarted = len(lines)
    assert wait_for(lambda: any("env steps " in line for line in lines[restarted:]), GUARD_SECONDS)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=GUARD_SECONDS)
    time.sleep(0.5)
    return {"code": code, "output": "".join(lines), "run_dir": run_dir, "cwd": cwd}


def test_faults_on_worker_nodes_are_survived_and_ctrl_c_ends_cleanly(interrupted_run: dict[str, Any]) -> None:
    output, run_dir = interrupted_run["output"], interrupted_run["run_dir"]
    assert interrupted_run["code"] == 130, output[-3000:]
    assert "actor-2 died" in output and "restarting" in output  # killed on its node, restarted by its agent
    assert "lost (" in output and "rows they had not shipped are lost" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "interrupted" and summary["env_steps"] > 0
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert wait_for(lambda: not _run_processes(), 60), _run_processes()  # no process of the run on any node


def test_the_interrupted_run_resumes_on_the_remaining_nodes(cluster: Any, interrupted_run: dict[str, Any]) -> None:
    run_dir = interrupted_run["run_dir"]
    stopped = json.loads((run_dir / "summary.json").read_text())["env_steps"]
    result = subprocess.run([os.sys.executable, "-m", "asyncql_cli", "train", f"resume={run_dir}",
                             f"train.total_env_steps={stopped + 3000}"], cwd=interrupted_run["cwd"],
                            capture_output=True, text=True, timeout=GUARD_SECONDS, env={**os.environ, **_env(cluster)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generation"] == 1 and summary["env_steps"] >= stopped + 3000
    assert wait_for(lambda: not _run_processes(), 60), _run_processes()


def test_resources_the_cluster_lacks_are_one_line(cluster: Any, tmp_path: Path) -> None:
    result = run_cli("train", *_args(cluster, tmp_path / "run", "parallelism.learner_resources.GPU=2"),
                     cwd=tmp_path, timeout=GUARD_SECONDS, env=_env(cluster))
    line = bad_input_line(result.stderr)
    assert result.returncode == 2 and "learner_resources" in line and "GPU=2" in line, line


def test_an_address_where_nothing_listens_is_one_line(tmp_path: Path) -> None:
    result = run_cli("train", "parallelism=ray", "parallelism.address=127.0.0.1:1", f"hydra.run.dir={tmp_path / 'r'}",
                     cwd=tmp_path, timeout=60, env=RAY_ENV)
    line = bad_input_line(result.stderr)
    assert result.returncode == 2 and "127.0.0.1:1" in line and "nothing answers" in line, line


@pytest.mark.parametrize(("overrides", "expected"), [
    (["algo.mode=actor_learner", "buffer=none"], "shared memory cannot span machines"),
    (["parallelism.address=nohost"], "host:port"),
    (["parallelism.actors_on_learner_node=5"], "parallelism.actors_on_learner_node"),
])
def test_configs_ray_cannot_run_are_refused(overrides: list[str], expected: str) -> None:
    with pytest.raises(BadInput, match=expected):
        load_config(compose_config(["parallelism=ray", *overrides]))


def test_without_ray_installed_the_line_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(BadInput, match=r"pip install 'asyncql\[ray\]'"):
        load_config(compose_config(["parallelism=ray"]))


def test_a_sweep_runs_its_jobs_as_ray_tasks_and_brings_their_files_back(cluster: Any, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_cli("train", "-m", "seed=0,1", "hydra/launcher=ray", f"hydra.launcher.address={cluster.address}",
                     "parallelism=serial", "train.total_env_steps=600", "train.learning_starts=200",
                     "train.progress=none", "eval.interval_seconds=0.3", f"hydra.sweep.dir={sweep_dir}",
                     cwd=tmp_path, timeout=GUARD_SECONDS, env=_env(cluster))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on Ray (1 CPU, 0 GPU)" in result.stdout
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == ["0_CartPole-v1_seed=0", "1_CartPole-v1_seed=1"]
    for job in jobs:  # every file of the job, here on the machine that launched the sweep
        folder = sweep_dir / job
        assert (folder / ".hydra" / "config.yaml").is_file() and (folder / "summary.json").is_file()
        assert (folder / "checkpoints" / "last.pt").is_file() and list(folder.glob("events.out.tfevents.*"))
        assert json.loads((folder / "summary.json").read_text())["exit_reason"] == "budget"
    assert (sweep_dir / "sweep_summary.csv").is_file()


def test_a_local_ray_starts_its_workers_at_normal_priority(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Ray's default nice 15 for workers lets other work on the machine starve a run's learner."""
    import ray

    from asyncql_cli.runtime.cluster.connect import connect

    for key in ("RAY_worker_niceness", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    seen: dict[str, str] = {}
    monkeypatch.setattr(ray, "init", lambda **_: seen.update(os.environ))
    connect("local", 64)
    assert seen["RAY_worker_niceness"] == "0" and seen["RAY_AUTH_MODE"] == "disabled"

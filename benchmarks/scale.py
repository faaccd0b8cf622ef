"""`parallelism=ray` against `parallelism=local` on this machine, simulated nodes, micro-benchmarks.

    .venv/bin/python benchmarks/scale.py [--seeds 0,1,2,3,4] [--out benchmarks/results/scale]

1. local against ray on one node (address=local): CartPole to a confirmed 475, launch to exit,
   the two alternating seed by seed; env steps/s, updates/s and policy lag from their summaries
   and TensorBoard events;
2. 1, 2 and 3 simulated nodes (ray.cluster_utils.Cluster on 127.0.0.1, one CPU each) at 3 actor
   processes in all, a fixed budget: env steps/s, updates/s, rows shipped/s, policy lag;
3. the remote actor's share of the env steps on 2 nodes (one of 3 actors remote), under the
   default `actor.max_update_debt`;
4. micro-benchmarks on a 2-node cluster with real node agents: rows shipped per second into the
   learner's agent against the shipping batch (CartPole transitions) and 84x84 frame rows moved as bytes, weight
   broadcast latency (CartPole's MLP, a 256x256 MLP, the Nature CNN), the tick round trip, and the
   start-up of Ray and an agent.
Every Ray process binds 127.0.0.1; usage statistics are off; Ray's files stay in a temporary
directory. A tool, not a test: nothing asserts a speed. Results: <out>/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_worker_niceness": "0"}
MIB = 1 << 20
SOLVE = ["env=CartPole-v1", "train.stop_at_return=475", "train.max_seconds=180", "train.progress=none"]
THROUGHPUT_STEPS = 30000


def _train(args: list[str], run_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "asyncql_cli", "train", *args, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    wall = time.monotonic() - start
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    return {
        "rc": done.returncode,
        "wall": wall,
        **{
            k: summary.get(k)
            for k in ("exit_reason", "env_steps", "updates", "env_steps_per_sec", "updates_per_sec", "best_eval_return")
        },
        "policy_lag": _mean_tag(run_dir, "actor/policy_lag"),
        "rows_shipped_per_sec": _mean_tag(run_dir, "ray/rows_shipped_per_sec"),
        "error": done.stderr[-500:] if done.returncode else None,
    }


def _mean_tag(run_dir: Path, tag: str) -> float | None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags().get("scalars", []):
        return None
    values = [e.value for e in events.Scalars(tag)]
    return statistics.fmean(values[len(values) // 4 :]) if values else None  # past the start-up


def local_against_ray(seeds: list[int], out: Path) -> dict[str, Any]:
    rows: dict[str, list[dict]] = {"local": [], "ray": []}
    for i, seed in enumerate(seeds):
        for mode in ("local", "ray") if i % 2 == 0 else ("ray", "local"):
            extra = ["parallelism=ray"] if mode == "ray" else []
            result = _train([*SOLVE, f"seed={seed}", *extra], out / f"solve_{mode}_{seed}", RAY_ENV)
            rows[mode].append({"seed": seed, **result})
            print(mode, seed, round(result["wall"], 2), result["exit_reason"], flush=True)
    for mode in ("local", "ray"):
        result = _train(
            [
                *SOLVE[:1],
                f"train.total_env_steps={THROUGHPUT_STEPS}",
                "train.progress=none",
                *(["parallelism=ray"] if mode == "ray" else []),
            ],
            out / f"throughput_{mode}",
            RAY_ENV,
        )
        rows[f"{mode}_throughput"] = [result]
    return rows


def _cluster(nodes: int, temp: Path) -> Any:
    from ray.cluster_utils import Cluster

    common = {
        "node_ip_address": "127.0.0.1",
        "object_store_memory": 150 * MIB,
        "memory": 1024 * MIB,
        "include_dashboard": False,
        "temp_dir": str(temp / "ray"),
    }
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **common})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1, **common)
    cluster.wait_for_nodes(timeout=120)
    return cluster


def nodes_at_equal_actors(out: Path, temp: Path) -> dict[str, Any]:
    rows = {}
    for nodes in (1, 2, 3):
        cluster = _cluster(nodes, temp)
        try:
            args = [
                "env=CartPole-v1",
                f"train.total_env_steps={THROUGHPUT_STEPS}",
                "train.progress=none",
                "parallelism=ray",
                f"parallelism.address={cluster.address}",
                "parallelism.num_actors=3",
                "parallelism.envs_per_actor=8",
            ]
            rows[str(nodes)] = _train(args, out / f"nodes_{nodes}", {**RAY_ENV, "RAY_TMPDIR": str(temp)})
            print("nodes", nodes, rows[str(nodes)], flush=True)
        finally:
            cluster.shutdown()
    return rows


def remote_share(out: Path, temp: Path) -> dict[str, Any]:
    """2 nodes, 3 actors (one remote), the default update-debt limit: the remote actor's share of
    the env steps (rows shipped against env steps per second) and its policy lag."""
    cluster = _cluster(2, temp)
    try:
        args = ["env=CartPole-v1", "train.total_env_steps=15000", "train.progress=none", "parallelism=ray",
                f"parallelism.address={cluster.address}", "parallelism.num_actors=3", "parallelism.envs_per_actor=8"]
        row = _train(args, out / "remote_share", {**RAY_ENV, "RAY_TMPDIR": str(temp)})
    finally:
        cluster.shutdown()
    shipped, steps = row["rows_shipped_per_sec"], row["env_steps_per_sec"]
    row["remote_share"] = shipped / steps if shipped is not None and steps else None
    row["remote_policy_lag"] = _mean_tag(out / "remote_share", "actor/policy_lag/node-1")
    print("remote share", row, flush=True)
    return row


def micro(temp: Path) -> dict[str, Any]:
    """Real node agents on a 2-node cluster, driven directly."""
    import numpy as np
    import ray

    from asyncql_cli.cli.hydra_app import compose
    from asyncql_cli.config.loading import load_config
    from asyncql_cli.envs.make import inspect_env
    from asyncql_cli.runtime.cluster.agent import NodeAgent
    from asyncql_cli.runtime.cluster.connect import pinned
    from asyncql_cli.runtime.cluster.placement import AgentPlan

    results: dict[str, Any] = {}
    started = time.monotonic()
    cluster = _cluster(2, temp)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    results["cluster_start_seconds"] = time.monotonic() - started
    try:
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        remote_agent = ray.remote(NodeAgent)

        def agents(overrides: list[str]) -> tuple[Any, Any, Any, Any]:
            config = load_config(compose(["parallelism=ray", "parallelism.num_actors=1", *overrides]))
            spec = inspect_env(config.env, config.network.name)
            counts = {"offset": 0, "env_steps": [0], "learner_updates": [0] * config.parallelism.num_learners}
            learner = remote_agent.options(**pinned(nodes[0])).remote(
                config, spec, 0, AgentPlan("learner", nodes[0], True, ()), counts
            )
            other = remote_agent.options(**pinned(nodes[1])).remote(
                config, spec, 0, AgentPlan("other", nodes[1], False, ()), counts, learner
            )
            t0 = time.monotonic()
            ray.get([learner.start.remote(), other.start.remote()])
            return learner, other, config, time.monotonic() - t0

        learner, other, config, agent_start = agents([])
        results["agents_start_seconds"] = agent_start
        ticks = []
        for _ in range(50):
            t0 = time.perf_counter()
            ray.get(other.tick.remote([0], [0]))
            ticks.append(1000 * (time.perf_counter() - t0))
        results["tick_ms_median"] = statistics.median(ticks)

        @ray.remote(num_cpus=0)
        def ship(target: Any, rows: dict[str, Any], batches: int, in_flight: int) -> float:
            pending, start = [], time.perf_counter()
            for _ in range(batches):
                if len(pending) >= in_flight:
                    _, pending = ray.wait(pending, num_returns=1)
                pending.append(target.ingest.remote(0, rows))
            ray.get(pending)
            return batches * len(rows["action"]) / (time.perf_counter() - start)

        def transitions(n: int, dim: int) -> dict[str, Any]:
            return {
                "obs": np.random.randn(n, dim).astype(np.float32),
                "next_obs": np.random.randn(n, dim).astype(np.float32),
                "action": np.zeros(n, np.int64),
                "reward": np.zeros(n, np.float32),
                "discount": np.full(n, 0.99, np.float32),
                "priority": np.ones(n, np.float32),
            }

        options = pinned(nodes[1])
        options.pop("max_restarts")
        for batch in (64, 256, 1024):
            rate = ray.get(ship.options(**options).remote(learner, transitions(batch, 4), 200, 2))
            results[f"rows_shipped_per_sec_cartpole_batch_{batch}"] = rate
        # weight broadcast: CartPole's network end to end (the learner's store, through the object
        # store, into the other node's store); larger networks: the object transfer alone
        entry = None
        while entry is None:
            entry = ray.get(learner.weights.remote())[0]
        latencies = []
        for _ in range(20):
            t0 = time.perf_counter()
            ray.get(other.publish.remote([ray.put([entry])]))
            latencies.append(1000 * (time.perf_counter() - t0))
        results["weight_broadcast_ms_cartpole_mlp"] = statistics.median(latencies)
        results["weight_bytes_cartpole_mlp"] = int(np.asarray(entry[0]).nbytes)

        @ray.remote(num_cpus=0)
        def receive(flat: Any) -> int:
            return int(flat.nbytes)

        for name, params in (("mlp_256x256", 67_000), ("nature_cnn", 1_690_000)):
            flat = np.random.randn(params).astype(np.float32)
            latencies = []
            for _ in range(10):
                t0 = time.perf_counter()
                ray.get(receive.options(**options).remote(ray.put(flat)))
                latencies.append(1000 * (time.perf_counter() - t0))
            results[f"weight_transfer_ms_{name}"] = statistics.median(latencies)
            results[f"weight_bytes_{name}"] = flat.nbytes
        # Atari: a shipped batch of 256 rows of one 84x84 frame each, moved as bytes
        frames = np.random.randint(0, 255, (256, 84 * 84), dtype=np.uint8)
        latencies = []
        for _ in range(20):
            t0 = time.perf_counter()
            ray.get(receive.options(**options).remote(ray.put(frames)))
            latencies.append(time.perf_counter() - t0)
        results["frame_rows_per_sec_batch_256"] = len(frames) / statistics.median(latencies)
        results["frame_megabytes_per_sec"] = frames.nbytes / statistics.median(latencies) / 1e6
        for agent in (learner, other):
            ray.get(agent.close.remote())
            ray.kill(agent)
        del config
    finally:
        ray.shutdown()
        cluster.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale")
    parser.add_argument("--parts", default="solve,nodes,share,micro")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix="aq-scale-"))
    os.environ.update({**RAY_ENV, "RAY_TMPDIR": str(temp)})
    (temp / "ray").mkdir(exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="aq-scale-runs-"))
    report: dict[str, Any] = {"load_average_start": os.getloadavg()[0]}
    parts = args.parts.split(",")
    if "solve" in parts:
        report["local_against_ray"] = local_against_ray([int(s) for s in args.seeds.split(",")], runs)
    if "nodes" in parts:
        report["nodes"] = nodes_at_equal_actors(runs, temp)
    if "share" in parts:
        report["remote_share"] = remote_share(runs, temp)
    if "micro" in parts:
        report["micro"] = micro(temp)
    report["load_average_end"] = os.getloadavg()[0]
    (args.out / "scale.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps(report, indent=1, default=str)[:4000])


if __name__ == "__main__":
    main()

"""`asyncql bench`: throughput of each pipeline component against a bare baseline.

    asyncql bench [--env ID] [--seconds S] [--envs-per-actor N] [--actors 1,2]
                  [--network mlp|nature_cnn] [--batch-size B] [--hidden 256,256]
                  [--capacity ROWS] [--device auto|cpu|cuda] [--amp off|bf16|fp16]
                  [--[no-]compile] [--[no-]prefetch] [--only env,actor,replay,learner] [--json PATH]

The learner on a GPU (the `ratio` column of `learner.update` against a bare loop of the same
network and batch):

    asyncql bench --env Pong --only learner --seconds 10               # Nature CNN, batch 32
    asyncql bench --env Pong --only learner --seconds 10 --amp bf16 --compile
    asyncql bench --only learner --seconds 10                          # the mlp, batch 128

`--env Pong` (any Atari env file) selects network=nature_cnn: the replay is the frame replay
filled with random uint8 frames of the Atari shape (4x84x84); the env is only inspected.
Per network, unset flags default to: mlp batch 128, hidden 256,256, the config's replay
capacity; nature_cnn batch 32, hidden 512, at most 100,000 rows. `--amp` and `--compile`
apply to both sides of the learner ratio; `--prefetch` (the learner's) to one.

Every number comes from one run, so the ratios compare measurements taken on the same
(possibly noisy) machine minutes apart at most:

- env:     a raw gymnasium loop (the same vector env the actors use, random actions);
- actor:   one `Actor` stepping in this process (with published weights, so it runs the
           Q-network), then N `actor_main` processes for each N of `--actors`, both as
           env steps/s and as a ratio to the raw loop;
- replay:  `ReplayStorage.write` rows/s and `UniformSampler.sample` batches/s on a full ring;
- learner: `Learner.update` updates/s on a full replay against a bare torch loop (same
           network, batch size, Adam, double-DQN Huber target, amp and compile, tensors
           already in the device's memory), on the learner device (cuda when available).

The components are built from the composed Hydra config by the wiring training uses
(runtime/wiring.py), and actor processes run in the same process group. This is a tool, not a
test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from dataclasses import asdict

from rich.console import Console

from asyncql_cli.checkpoint import write_json
from asyncql_cli.cli.bench.actors import bench_actor_processes, bench_env_and_actor
from asyncql_cli.cli.bench.learning import bench_learner, bench_replay
from asyncql_cli.cli.bench.measure import Result, add_ratios
from asyncql_cli.cli.bench.options import compose_config, parse_args
from asyncql_cli.cli.bench.report import machine_info, print_report
from asyncql_cli.config.schema import Config
from asyncql_cli.envs.make import EnvSpec
from asyncql_cli.errors import BadInput
from asyncql_cli.workers.device import resolve_device, torch_threads


def run_parts(args: argparse.Namespace, config: Config, spec: EnvSpec) -> list[Result]:
    results: list[Result] = []
    if "env" in args.only or "actor" in args.only:
        results += bench_env_and_actor(args.only, config, spec, args.seconds)
    if "actor" in args.only:
        base_rate = None
        for count in args.actors:
            results.append(bench_actor_processes(config, spec, count, args.seconds, base_rate))
            if count == 1:
                base_rate = results[-1].value
    if "replay" in args.only:
        results += bench_replay(config, spec, args.seconds)
    if "learner" in args.only:
        results += bench_learner(config, spec, args.seconds)
    add_ratios(results)
    return results


def run_bench(argv: list[str]) -> None:
    args = parse_args(argv)
    config, spec = compose_config(args)
    threads = config.parallelism.torch_threads
    device = resolve_device(config.parallelism.learner_device)
    machine = machine_info(device, threads)
    load_before = os.getloadavg()[0]
    with torch_threads(threads):
        results = run_parts(args, config, spec)
    # other work on the machine moves absolute numbers; the load average says how much there was
    machine["load_average_1m"] = {"start": load_before, "end": os.getloadavg()[0]}
    print_report(machine, results, spec.env_id)
    if args.json is not None:
        settings = {
            "command": shlex.join(["asyncql", "bench", *argv]), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "env": spec.env_id, "seconds": args.seconds, "envs_per_actor": args.envs_per_actor,
            "actors": args.actors, "network": args.network, "batch_size": args.batch_size, "hidden": args.hidden,
            "capacity": args.capacity, "amp": args.amp, "compile": args.compile, "prefetch": args.prefetch,
            "device": args.device, "only": args.only,
        }
        try:
            write_json(args.json, {"machine": machine, "settings": settings, "results": [asdict(r) for r in results]})
        except OSError as exc:
            raise BadInput(f"bench: cannot write --json {args.json} ({exc.strerror})") from None
        Console().print(f"written: {args.json}")

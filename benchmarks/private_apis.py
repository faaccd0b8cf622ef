"""What each private API in asyncql_cli/compat.py buys, against its public fallback, in one run.

    .venv/bin/python benchmarks/private_apis.py [--seconds 3] [--json PATH]

- `Learner.update` on CartPole's network and batch (64x64 + LayerNorm, batch 192; the tensor-list
  ops, the fused Adam and the norm), private and public paths in alternating slices;
- the exit of a process that imported torch: `exit_without_teardown` against a normal exit;
- a 1 GB shared uint8 tensor (the Atari frame replay's allocation): private against public;
- checking a command line by composing it first, the public API used instead of patching Hydra's
  private error reporting (it costs one composition per command).
Ratios are what to read: the machine's load moves the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

EXIT_PROBE = ("import torch, gymnasium, asyncql_cli.runtime.run\n"
              "from asyncql_cli.compat import exit_without_teardown\nexit_without_teardown(0)")
ROUNDS = 5
GIGABYTE = 1 << 30


def learner_rates(seconds: float) -> dict[str, float]:
    from asyncql_cli.cli.bench.learning import filled
    from asyncql_cli.cli.hydra_app import compose
    from asyncql_cli.compat import use_private
    from asyncql_cli.config.loading import load_config
    from asyncql_cli.envs.make import inspect_env
    from asyncql_cli.workers.learner import Learner

    config = load_config(compose(["env=CartPole-v1", "parallelism.learner_device=cpu"]))
    spec = inspect_env(config.env, config.network.name)
    wiring, shared = filled(config, spec)
    learner = Learner(wiring.learner_settings(0), shared.storage, shared.stores[0], shared.counters, shared.stats)
    done = {"private": 0, "public": 0}
    spent = {"private": 0.0, "public": 0.0}
    for _ in range(ROUNDS):
        for name, private in (("private", True), ("public", False)):
            with use_private(private):
                end = time.perf_counter() + seconds / ROUNDS
                start = time.perf_counter()
                while time.perf_counter() < end:
                    done[name] += int(learner.update())
                spent[name] += time.perf_counter() - start
    return {name: done[name] / spent[name] for name in done}


def exit_seconds() -> dict[str, float]:
    times: dict[str, list[float]] = {"private": [], "public": []}
    for _ in range(ROUNDS):
        for name, flag in (("private", "0"), ("public", "1")):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", EXIT_PROBE], check=True,
                           env={**os.environ, "ASYNCQL_PUBLIC_APIS_ONLY": flag})
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def allocation_seconds() -> dict[str, float]:
    from asyncql_cli.compat import shared_uint8, use_private

    out = {}
    for name, private in (("private", True), ("public", False)):
        with use_private(private):
            start = time.perf_counter()
            tensor = shared_uint8((GIGABYTE,))
            out[name] = time.perf_counter() - start
            del tensor
    return out


def compose_seconds() -> float:
    from asyncql_cli.cli.hydra_app import check_command_line

    check_command_line(["env=CartPole-v1"])  # warm: imports
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        check_command_line(["env=CartPole-v1", "seed=3"])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results = {"load_average_1m_start": os.getloadavg()[0], "learner_updates_per_sec": learner_rates(args.seconds),
               "exit_seconds": exit_seconds(), "allocate_1gb_seconds": allocation_seconds(),
               "compose_first_seconds": compose_seconds(), "load_average_1m_end": os.getloadavg()[0]}
    rates = results["learner_updates_per_sec"]
    print(f"Learner.update, CartPole net: private {rates['private']:.0f}/s, public {rates['public']:.0f}/s "
          f"({rates['public'] / rates['private']:.3f}x)")
    ex = results["exit_seconds"]
    print(f"exit after importing torch: private {ex['private']:.2f} s, public {ex['public']:.2f} s")
    alloc = results["allocate_1gb_seconds"]
    print(f"1 GB shared uint8: private {alloc['private']:.3f} s, public {alloc['public']:.3f} s")
    print(f"composing a command line first: {results['compose_first_seconds']:.3f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

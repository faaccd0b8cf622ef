"""`asyncql bench`'s arguments, and the training config they compose to."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Optional

from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from asyncql_cli.cli.hydra_app import compose, config_dir
from asyncql_cli.config.loading import load_config
from asyncql_cli.config.schema import Config
from asyncql_cli.config.validation import validate
from asyncql_cli.envs.make import EnvSpec, inspect_env
from asyncql_cli.errors import BadInput

PARTS = ("env", "actor", "replay", "learner")


@dataclass(frozen=True)
class NetworkDefaults:
    """What the bench measures a network with when the flags leave it open."""

    batch_size: int
    hidden: tuple[int, ...]
    max_capacity: Optional[int]  # cap on the config's buffer.capacity (None: the config's)


NETWORK_DEFAULTS = {
    "mlp": NetworkDefaults(batch_size=128, hidden=(256, 256), max_capacity=None),
    # Nature DQN's batch and layer; 100k frames (~0.7 GB) already defeat every CPU cache, as
    # the 1M of training do, without filling gigabytes first
    "nature_cnn": NetworkDefaults(batch_size=32, hidden=(512,), max_capacity=100_000),
}



class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as BadInput (one line, exit 2) instead of usage."""

    def error(self, message: str) -> NoReturn:
        raise BadInput(f"bench: {message} (see asyncql bench --help)")


def _positive_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise BadInput(f"bench: {flag} {text!r}: expected a comma list of integers > 0, e.g. 1,2") from None
    if not values or any(v <= 0 for v in values):
        raise BadInput(f"bench: {flag} {text!r}: expected a comma list of integers > 0, e.g. 1,2")
    return values


def _parts(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if not parts or unknown:
        raise BadInput(f"bench: --only {text!r}: expected a comma list of {', '.join(PARTS)}")
    return [part for part in PARTS if part in parts]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="asyncql bench", description="Throughput of actors, replay and learner "
                     "against a raw gymnasium loop and a bare torch loop.")
    parser.add_argument("--env", default="CartPole-v1", help="conf/env name or gymnasium id (default CartPole-v1)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement (default 3)")
    parser.add_argument("--envs-per-actor", type=int, default=8, help="envs per vector env (default 8)")
    parser.add_argument("--actors", default="1,2", help="actor process counts to measure (default 1,2)")
    parser.add_argument("--network", choices=tuple(NETWORK_DEFAULTS), default=None,
                        help="Q-network (default: the env config's; Atari envs select nature_cnn)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sample/update batch size (default 128 for mlp, 32 for nature_cnn)")
    parser.add_argument("--hidden", default=None,
                        help="Q-network hidden sizes (default 256,256 for mlp, 512 for nature_cnn)")
    parser.add_argument("--capacity", type=int, default=None,
                        help="replay rows (default the config's buffer.capacity, at most 100000 for nature_cnn)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="learner device")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default=None,
                        help="learner and bare loop mixed precision (default: the config's algo.amp)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the Q-network of learner and bare loop (default: algo.compile)")
    parser.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                        help="the learner draws batch k+1 during update k (default: algo.prefetch)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"subset of {','.join(PARTS)} (default all)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise BadInput(f"bench: --seconds {args.seconds}: expected a number > 0")
    if args.envs_per_actor <= 0:
        raise BadInput(f"bench: --envs-per-actor {args.envs_per_actor}: expected an integer > 0")
    for flag, value in (("--batch-size", args.batch_size), ("--capacity", args.capacity)):
        if value is not None and value <= 0:
            raise BadInput(f"bench: {flag} {value}: expected an integer > 0")
    args.actors = sorted(set(_positive_ints(args.actors, "--actors")))
    if args.hidden is not None:
        args.hidden = _positive_ints(args.hidden, "--hidden")
    args.only = _parts(args.only)
    if args.json is not None:
        check_writable(args.json)
    return args


def check_writable(path: Path) -> None:
    """Refuse an unwritable --json before spending minutes measuring."""
    if path.is_dir():
        raise BadInput(f"bench: --json {path} is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"bench: --json {path}: cannot create {path.parent} ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise BadInput(f"bench: --json {path}: {path.parent} is not writable")


# -------------------------------------------------------------------------------- config
def compose_config(args: argparse.Namespace) -> tuple[Config, EnvSpec]:
    """The training config (conf/ composed by Hydra) with the bench's choices applied,
    validated like `asyncql train` validates it, and the env's spec. Flags
    left unset get their network's `NETWORK_DEFAULTS` (written back into `args`)."""
    named = args.env != "gym" and (Path(config_dir()) / "env" / f"{args.env}.yaml").is_file()
    try:
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
        overrides = [f"env={args.env}" if named else "env=gym"]
        if args.network is not None:
            overrides.append(f"network={args.network}")
        cfg = compose(overrides)
        if not named:
            cfg.env.id = args.env
        args.network = cfg.network.name
        defaults = NETWORK_DEFAULTS.get(args.network, NETWORK_DEFAULTS["mlp"])  # unknown: validate() says so
        args.batch_size = args.batch_size or defaults.batch_size
        args.hidden = args.hidden or list(defaults.hidden)
        if args.capacity is None:
            args.capacity = min(cfg.buffer.capacity, defaults.max_capacity or cfg.buffer.capacity)
        cfg.parallelism.envs_per_actor = args.envs_per_actor
        cfg.parallelism.learner_device = args.device
        cfg.network.hidden = args.hidden
        cfg.algo.batch_size = args.batch_size
        cfg.buffer.capacity = args.capacity
        # nothing waits for learning_starts here (the replay is filled up front); only keep it valid
        cfg.train.learning_starts = min(cfg.train.learning_starts, args.capacity)
        for key in ("amp", "compile", "prefetch"):
            if getattr(args, key) is not None:
                cfg.algo[key] = getattr(args, key)
        args.amp, args.compile, args.prefetch = cfg.algo.amp, cfg.algo.compile, cfg.algo.prefetch
        cfg.actor.max_update_debt = None  # no learner runs beside the actors: never throttle
    except (HydraException, OmegaConfBaseException) as exc:
        raise BadInput(f"bench: config: {' '.join(str(exc).split())}") from None
    config = load_config(cfg)
    for count in args.actors:  # the replay must split into `count` segments
        validate(with_actors(config, count))
    return config, inspect_env(config.env, config.network.name)


def with_actors(config: Config, count: int) -> Config:
    return dataclasses.replace(config, parallelism=dataclasses.replace(config.parallelism, num_actors=count))



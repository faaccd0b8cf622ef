"""The Hydra app: where `conf/` is, asyncql's resolvers, one `compose`, and one-line errors.

Hydra reports a composition error over several lines with exit 1, and accepts a `+key=value`
the schema does not have (the run would then ignore it). Both become the contract's one line and
exit 2 before Hydra runs: `check_keys` refuses unknown keys with the key meant (`config.keys`);
`check_command_line` composes the command line with Hydra's public compose API and refuses what
Hydra would, then what validation would (a single run), the run directory included: bad input
fails before any process starts or any run directory is made. That costs one extra composition per command (about 2%
of a CartPole run, benchmarks/RESULTS.md), instead of patching Hydra's private error reporting.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from asyncql_cli.cli.common import one_line, parse_overrides
from asyncql_cli.cli.sweep_naming import job_dirname
from asyncql_cli.config.keys import OPEN_KEYS, is_known, unknown_key_message
from asyncql_cli.config.loading import load_config
from asyncql_cli.config.schema import register_configs
from asyncql_cli.errors import BadInput

# Hydra's own flags, and whether each takes a value (the rest of a command line are overrides)
HYDRA_FLAGS = {"-m": False, "--multirun": False, "--cfg": True, "-c": True, "--package": True, "-p": True,
               "--help": False, "-h": False, "--hydra-help": False, "--info": False, "-i": False,
               "--resolve": False, "--config-path": True, "-cp": True, "--config-name": True, "-cn": True,
               "--config-dir": True, "-cd": True, "--experimental-rerun": True, "--shell-completion": False,
               "-sc": False}
INFORMATIONAL = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve", "--shell-completion",
                 "-sc"}


def config_dir() -> str:
    """`conf/` beside the package in a source tree or editable install, else the copy installed
    inside the package by `pip install .`."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError("asyncql: cannot find its conf/ directory")  # a broken install


def register_resolvers() -> None:
    register_configs()
    if not OmegaConf.has_resolver("pid"):
        # cached: a sweep's jobs in joblib workers resolve the same hydra.sweep.dir
        OmegaConf.register_new_resolver("pid", lambda: os.getpid(), use_cache=True)
    if not OmegaConf.has_resolver("sanitize"):
        OmegaConf.register_new_resolver("sanitize", lambda value: str(value).replace("/", "_").replace(":", "_"))
    if not OmegaConf.has_resolver("job_dirname"):  # hydra.sweep.subdir
        OmegaConf.register_new_resolver("job_dirname", job_dirname)


def compose(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """conf/config.yaml with these overrides, as `asyncql train` composes it."""
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name="train"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)


def split_command_line(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, the overrides)."""
    flags, overrides = [], []
    args = iter(argv)
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in HYDRA_FLAGS:
            flags.append(arg)
            if HYDRA_FLAGS[name] and "=" not in arg:
                value = next(args, None)
                if value is not None:
                    flags.append(value)
        else:
            overrides.append(arg)
    return flags, overrides


def _config_groups() -> set[str]:
    return {p.name for p in Path(config_dir()).iterdir() if p.is_dir()}


def _first_values(overrides: list[str]) -> Optional[list[str]]:
    """The overrides of one job of a sweep (each sweep's first value); None if one cannot be
    listed (an interval of a search)."""
    single = []
    for text, override in zip(overrides, parse_overrides(overrides)):
        if not override.is_sweep_override():
            single.append(text)
            continue
        key = override.get_key_element()
        try:
            first = next(iter(override.sweep_string_iterator()))
        except Exception:  # noqa: BLE001 - an interval: not listable
            return None
        single.append(f"{key}={first}")
    return single


def open_dictionaries(argv: list[str]) -> list[str]:
    """Overrides of an open dictionary of the schema (`env.kwargs`: whatever the env accepts) as
    Hydra's force-add (`++`), so a new key needs no `+` there; every other argument unchanged."""
    out = []
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" in arg and not key.startswith(("+", "~")) and any(
                key == open_key or key.startswith(f"{open_key}.") for open_key in OPEN_KEYS):
            arg = f"++{arg}"
        out.append(arg)
    return out


def check_keys(argv: list[str]) -> None:
    """Refuse an override of a key the schema does not have, with or without `+` (cheap: no
    composition)."""
    _, overrides = split_command_line(argv)
    groups = _config_groups()
    for override in parse_overrides(overrides):
        key = override.key_or_group
        if key.split("/", 1)[0] in groups or key.startswith("hydra"):
            continue
        if not is_known(key):
            raise BadInput(unknown_key_message(key))


def check_command_line(argv: list[str]) -> None:
    """Refuse what Hydra would refuse, as one BadInput line, by composing first (the public path)."""
    flags, overrides = split_command_line(argv)
    parsed = parse_overrides(overrides)
    if len(parsed) != len(overrides):
        bad = next(text for text in overrides if not parse_overrides([text]))
        raise BadInput(f"config: cannot parse the override {bad!r} (expected key=value)")
    if any(flag in INFORMATIONAL for flag in flags):
        return
    single = _first_values(overrides) if any(f in ("-m", "--multirun") for f in flags) else overrides
    if single is None:
        return
    try:
        composed = compose(single, return_hydra_config=True)
    except Exception as exc:  # noqa: BLE001 - Hydra's composition errors have no common base
        raise BadInput(f"config: {one_line(exc)}") from None
    multirun = single is not overrides
    if not multirun:  # a sweep's jobs are checked one by one, each in its own job
        load_config(OmegaConf.masked_copy(composed, [key for key in composed if key != "hydra"]))
    _check_run_dir_parent(composed, multirun)


def _check_run_dir_parent(composed: Any, multirun: bool) -> None:
    """Make the run directory's parent (Hydra makes the directory itself a moment later, with its
    own timestamp) and refuse one that cannot be made."""
    flag = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        target = Path(str(OmegaConf.select(composed, flag)))
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's own run can resolve
        return
    try:
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(20, "not a directory", str(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".asyncql-probe-", dir=target.parent))  # can a directory be made here?
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise BadInput(f"cannot create the run directory {target} ({exc.strerror or exc}{where}); "
                       f"pass a writable {flag}=DIR") from None

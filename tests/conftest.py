"""Shared test helpers: compose asyncql configs in-process, run the real CLI in a subprocess.

Composing configs (no subprocess, no torch import):

    from conftest import compose_config, config_groups

    cfg = compose_config(["env=gym", "env.id=Taxi-v3", "algo.lr=3e-4"])   # a DictConfig
    config_groups()  # {"buffer": ["uniform", ...], "env": ["CartPole-v1", "gym", ...], ...}

  or take the `compose` fixture, which is `compose_config` itself:

    def test_x(compose):
        cfg = compose(["parallelism=serial"])

  `compose_config` goes through Hydra's `initialize_config_dir` + `compose` over the same
  conf/ that `asyncql train` uses (`asyncql_cli.cli.config_dir()`), with the structured
  schema and asyncql's resolvers registered, so unknown keys and wrong types fail exactly as
  on the command line (Hydra/OmegaConf exceptions). It does not validate ranges: call
  `asyncql_cli.config.validate(cfg)` for that. The `hydra` node is left out unless
  `return_hydra_config=True`.

Running the CLI (a fresh interpreter per call, as a user would run it):

    from conftest import run_cli

    rc, out, err = run_cli("train", "algo.gamma=1.5", f"hydra.run.dir={tmp_path / 'run'}",
                           cwd=tmp_path, timeout=30)

  `run_cli(*args, cwd, timeout=60, env=None, check_leftovers=True)` runs
  `[sys.executable, "-m", "asyncql_cli", *args]` and returns a `CliResult`, a named
  tuple `(returncode, stdout, stderr)`. Pass `cwd=tmp_path` so a default `runs/` lands in
  the test's directory. The child runs in its own session (process group): if it outlives
  `timeout`, the whole group is killed and the test fails with the output so far; with
  `check_leftovers` (the default) the test also fails if any process of that group (an actor,
  a learner, a resource tracker) is still alive a few seconds after the CLI exited, and those
  processes are killed. HYDRA_FULL_ERROR is removed from the child's environment so errors
  are reported the way users see them; `env` adds or overrides variables.

Also here: `bad_input_line(stderr)` checks the one-line `asyncql: error: ...` contract and
returns that line; `has_gpu()` tells whether CUDA is usable (imports torch lazily). Tests
marked `@pytest.mark.cuda` are skipped without a GPU (`pytest -m cuda` selects them).

`--stress-iterations N` runs every `@pytest.mark.stress` test (the multi-process race tests) N
times in one session: `make stress` (200 by default).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, Optional

import pytest
from omegaconf import DictConfig

from asyncql_cli.cli.hydra_app import config_dir


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stress-iterations", type=int, default=1,
                     help="run each test marked stress this many times (make stress)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    iterations = metafunc.config.getoption("stress_iterations")
    if iterations > 1 and metafunc.definition.get_closest_marker("stress"):
        metafunc.fixturenames.append("stress_iteration")
        metafunc.parametrize("stress_iteration", range(iterations))

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = Path(config_dir())
# Directories of conf/ that are not user-facing config groups.
NON_GROUP_DIRS = ("hydra",)
# how long a finished CLI's process group may take to go (a wait, not a bound: it ends when it is gone)
LEFTOVER_GRACE_SECONDS = 60.0


# ----------------------------------------------------------------------------- composing
def compose_config(
    overrides: Sequence[str] = (), config_name: str = "config", return_hydra_config: bool = False
) -> DictConfig:
    """Compose conf/<config_name>.yaml with Hydra overrides, as `asyncql train` does."""
    from hydra import compose, initialize_config_dir

    from asyncql_cli.cli.hydra_app import register_resolvers
    from asyncql_cli.config.schema import register_configs

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        return compose(
            config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config
        )


def config_groups() -> dict[str, list[str]]:
    """Every user-facing config group of conf/ and its options (file stems), sorted."""
    groups: dict[str, list[str]] = {}
    for group_dir in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        if group_dir.name in NON_GROUP_DIRS:
            continue
        options = sorted(p.stem for p in group_dir.glob("*.yaml"))
        if options:
            groups[group_dir.name] = options
    return groups


@pytest.fixture
def compose() -> Any:
    """`compose_config` as a fixture: `compose(["env=gym", "env.id=Taxi-v3"])`."""
    return compose_config


# ---------------------------------------------------------------------------- subprocess
@pytest.fixture(autouse=True)
def _no_run_outlives_its_test() -> Any:
    yield
    from proc_utils import stop_leftover_runs

    stop_leftover_runs()


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (cannot happen for our own group)
        return True
    return True


def _group_members(pgid: int) -> list[str]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(f"{entry}: {cmd.strip()}")
    return members


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_cli(
    *args: str,
    cwd: Path | str,
    timeout: float = 60.0,
    env: Optional[dict[str, str]] = None,
    check_leftovers: bool = True,
) -> CliResult:
    """Run `python -m asyncql_cli ARGS` in `cwd`; return (returncode, stdout, stderr)."""
    child_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    child_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncql_cli", *args],
        cwd=cwd, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    pgid = proc.pid  # a new session: the child leads its own process group
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(pgid)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"asyncql {' '.join(args)} ran past {timeout:.0f} s and was killed\n"
            f"--- stdout (end):\n{stdout[-3000:]}\n--- stderr (end):\n{stderr[-3000:]}"
        )
    if check_leftovers:
        deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(pgid):
            members = _group_members(pgid)
            _kill_group(pgid)
            if members:  # only zombies of already-dead processes would leave this empty
                pytest.fail(f"asyncql {' '.join(args)} left processes behind: {members}")
    return CliResult(proc.returncode, stdout, stderr)


def bad_input_line(stderr: str) -> str:
    """Assert the bad-input contract on stderr (exactly one line, `asyncql: error: ...`,
    no traceback) and return that line."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("asyncql: error:"), lines[0]
    return lines[0]


@cache
def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `cuda` skip cleanly on a machine without a CUDA GPU."""
    needs_gpu = [item for item in items if item.get_closest_marker("cuda")]
    if needs_gpu and not has_gpu():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in needs_gpu:
            item.add_marker(skip)

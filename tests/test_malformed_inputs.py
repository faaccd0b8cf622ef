"""Any file that is not a readable asyncql checkpoint, wherever one is read (`asyncql eval` with
checkpoint=best|last|PATH, `resume=DIR`'s last.pt, a replay snapshot), is one line naming the file
and exit 2: nothing from it runs and nothing already saved is overwritten."""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import bad_input_line, compose_config

from asyncql_cli.algo.networks import build_network
from asyncql_cli.checkpoint import FORMAT, load_checkpoint, load_replay_into, save_checkpoint
from asyncql_cli.cli.main import main
from asyncql_cli.config.loading import load_config
from asyncql_cli.envs.make import inspect_env
from asyncql_cli.errors import BadInput
from asyncql_cli.replay.transitions import ReplayStorage
from asyncql_cli.runtime.restore import read_resume


class Exploit:
    def __reduce__(self):  # would create a marker file if anything unpickled it
        return (os.system, (f"touch {os.environ.get('ASYNCQL_MARKER', '/tmp/asyncql_pwned')}",))


def _torch_bytes(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@functools.cache
def _default_network() -> dict[str, torch.Tensor]:
    """The weights of CartPole's default network."""
    config = load_config(compose_config([]))
    spec = inspect_env(config.env, config.network.name)
    return build_network(config.network, spec.obs_shape, spec.num_actions).state_dict()


def _checkpoint(**changes: object) -> dict:
    state = {"format": FORMAT, "env_id": "CartPole-v1", "obs_shape": [4], "num_actions": 2,
             "network": {"name": "mlp", "hidden": [64, 64], "dueling": False, "layer_norm": True},
             "q_net": _default_network(), "updates": 1, "env_steps": 1}
    state.update(changes)
    return state


@functools.cache
def malformed_files() -> dict[str, bytes]:
    good = _torch_bytes(_checkpoint())
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return {
        "empty": b"",
        "truncated": good[: len(good) // 3],
        "random-bytes": os.urandom(4096),
        "text": b"these are my notes, not a checkpoint\n" * 20,
        "json": json.dumps({"format": FORMAT, "q_net": {}}).encode(),
        "zip-of-text": zipped.getvalue(),
        "gzip": gzip.compress(good),
        "pickle-of-an-exploit": pickle.dumps(Exploit()),
        "torch-pickle-of-an-exploit": _torch_bytes({"format": FORMAT, "q_net": Exploit()}),
        "foreign-torch-file": _torch_bytes({"weights": torch.zeros(3)}),
        "no-q-net": _torch_bytes(_checkpoint(q_net=None)),
        "q-net-of-strings": _torch_bytes(_checkpoint(q_net={"a.weight": "nope"})),
        "another-env": _torch_bytes(_checkpoint(env_id="Acrobot-v1", obs_shape=[6], num_actions=3)),
        "another-network": _torch_bytes(_checkpoint(network={"name": "mlp", "hidden": [256], "dueling": False})),
        "weights-of-another-shape": _torch_bytes(_checkpoint(q_net={"advantage.weight": torch.zeros(9, 9)})),
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) run directory: its config, best.pt and last.pt."""
    cwd = tmp_path_factory.mktemp("malformed")
    run_dir = cwd / "run"
    done = subprocess.run([sys.executable, "-m", "asyncql_cli", "train", "train.total_env_steps=2000",
                           "parallelism=serial", "eval.interval_seconds=0.5", "train.learning_starts=500",
                           "train.progress=none", "checkpoint.save_replay=true", f"hydra.run.dir={run_dir}"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


NAMES = list(malformed_files())


@functools.cache
def _spec() -> object:
    config = load_config(compose_config([]))
    return inspect_env(config.env, config.network.name)


def test_the_list_is_a_dozen_kinds_at_least() -> None:
    assert len(NAMES) >= 12


@pytest.mark.parametrize("name", NAMES)
def test_eval_of_a_malformed_checkpoint_path_is_one_line(trained_run: Path, tmp_path: Path, name: str,
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ASYNCQL_MARKER", str(marker))
    path = tmp_path / f"{name}.pt"
    path.write_bytes(malformed_files()[name])
    before = _snapshot(trained_run)
    with pytest.raises(SystemExit) as exited:
        main(["eval", str(trained_run), f"checkpoint={path}", "eval.episodes=2"])
    assert exited.value.code == 2
    line = bad_input_line(capsys.readouterr().err)
    assert str(path) in line
    assert not marker.exists() and not (tmp_path / "eval.json").exists()
    assert _snapshot(trained_run) == before


@pytest.mark.parametrize("name", NAMES)
def test_a_malformed_best_pt_and_last_pt_are_one_line_for_eval_and_resume(trained_run: Path, tmp_path: Path,
                                                                          name: str, capsys: pytest.CaptureFixture,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCQL_MARKER", str(tmp_path / "pwned"))
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for which in ("best.pt", "last.pt"):
        (run_dir / "checkpoints" / which).write_bytes(malformed_files()[name])
    before = _snapshot(run_dir)
    for which in ("best", "last"):
        with pytest.raises(SystemExit) as exited:
            main(["eval", str(run_dir), f"checkpoint={which}", "eval.episodes=2"])
        assert exited.value.code == 2
        assert f"{which}.pt" in bad_input_line(capsys.readouterr().err)
    config = load_config(compose_config([]))
    with pytest.raises(BadInput, match="last.pt"):  # what `resume=DIR` reads first
        read_resume(run_dir, _spec(), config.network, 1, False)
    assert not (tmp_path / "pwned").exists() and _snapshot(run_dir) == before


@pytest.mark.parametrize("name", NAMES)
def test_a_malformed_replay_snapshot_is_one_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / "replay.pt"
    path.write_bytes(malformed_files()[name])
    storage = ReplayStorage(64, 1, 8, (4,))
    with pytest.raises(BadInput, match="replay"):
        load_replay_into(storage, path)
    assert storage.size() == 0


@pytest.mark.parametrize("name", ["text", "truncated", "another-env"])
def test_resume_through_the_command_is_one_line_and_overwrites_nothing(trained_run: Path, tmp_path: Path,
                                                                       name: str) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / "checkpoints" / "last.pt").write_bytes(malformed_files()[name])
    checkpoints = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    summary = (run_dir / "summary.json").read_bytes()
    done = subprocess.run([sys.executable, "-m", "asyncql_cli", "train", f"resume={run_dir}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "last.pt" in bad_input_line(done.stderr)
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == checkpoints
    assert (run_dir / "summary.json").read_bytes() == summary


def test_a_good_checkpoint_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    save_checkpoint(path, {k: v for k, v in _checkpoint().items() if k != "format"})
    assert load_checkpoint(path)["env_id"] == "CartPole-v1"

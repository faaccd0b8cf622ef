"""Packaging: a plain (non-editable) install carries conf/ inside the package and the
console script composes its config from there."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    return next(out.glob("asyncql-*.whl"))


def test_wheel_ships_every_config_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"asyncql_cli/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert expected and expected <= names, expected - names


def test_installed_copy_composes_from_its_own_conf(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    located = subprocess.run(
        [sys.executable, "-c", "from asyncql_cli.cli.hydra_app import config_dir; print(config_dir())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert Path(located) == target / "asyncql_cli" / "conf"
    shown = subprocess.run(
        [sys.executable, "-m", "asyncql_cli", "train", "--cfg", "job", "env=gym", "env.id=Acrobot-v1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "id: Acrobot-v1" in shown.stdout and "algo:" in shown.stdout

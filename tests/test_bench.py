"""`asyncql bench`: every measurement is reported, no process outlives it, bad input is one line.

Speeds are not asserted (this is not a timed test); only that each number exists and is > 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncql_cli.cli.bench import run_bench
from asyncql_cli.errors import BadInput

EXPECTED = {
    "env.raw_gymnasium": None,
    "actor.in_process": "env.raw_gymnasium",
    "actor.processes_1": "env.raw_gymnasium",
    "replay.insert": None,
    "replay.sample": None,
    "learner.bare_torch": None,
    "learner.update": "learner.bare_torch",
}


def child_processes(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose parent is `pid`, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited while we looked
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields.get("PPid", "0").strip()) == pid:
            children.append((int(entry.name), cmdline.strip() or fields.get("Name", "").strip()))
    return children


def leftover_children() -> list[tuple[int, str]]:
    """Children of this test process, except multiprocessing's resource tracker (one per
    process, started by the first spawn-context semaphore, by design alive until we exit)."""
    return [(pid, cmd) for pid, cmd in child_processes(os.getpid()) if "resource_tracker" not in cmd]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_bench_reports_every_measurement_and_leaves_no_process(tmp_path: Path) -> None:
    before = leftover_children()
    out = tmp_path / "results" / "bench.json"
    run_bench(["--seconds", "0.3", "--actors", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "results"}
    assert report["machine"]["cpu"] and report["machine"]["logical_cores"] >= 1
    results = {r["name"]: r for r in report["results"]}
    assert set(results) == set(EXPECTED)
    for name, baseline in EXPECTED.items():
        assert results[name]["value"] > 0, name
        assert results[name]["unit"], name
        assert results[name]["baseline"] == baseline, name
        if baseline is not None:
            assert results[name]["ratio"] == pytest.approx(results[name]["value"] / results[baseline]["value"])
    assert leftover_children() == before


@pytest.mark.timeout(120)
def test_bench_measures_the_nature_cnn_learner(tmp_path: Path) -> None:
    """An Atari env file selects nature_cnn: batch 32 of uint8 frames from the frame replay,
    both sides of the learner ratio measured on this machine's learner device."""
    pytest.importorskip("ale_py", reason="Atari envs need ale-py")
    out = tmp_path / "bench.json"
    run_bench(["--env", "Pong", "--only", "learner", "--seconds", "0.2", "--capacity", "2048",
               "--json", str(out)])
    report = json.loads(out.read_text())
    settings = report["settings"]
    assert (settings["network"], settings["batch_size"], settings["hidden"]) == ("nature_cnn", 32, [512])
    results = {r["name"]: r for r in report["results"]}
    assert set(results) == {"learner.bare_torch", "learner.update"}
    assert results["learner.bare_torch"]["value"] > 0 and results["learner.update"]["value"] > 0
    assert results["learner.update"]["ratio"] == pytest.approx(
        results["learner.update"]["value"] / results["learner.bare_torch"]["value"])
    assert "FrameStorage" in results["learner.update"]["note"]


def test_bench_only_runs_the_chosen_parts(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run_bench(["--seconds", "0.1", "--only", "replay", "--hidden", "32", "--json", str(out)])
    names = [r["name"] for r in json.loads(out.read_text())["results"]]
    assert names == ["replay.insert", "replay.sample"]


@pytest.mark.parametrize("argv", [
    ["--only", "nonsense"],
    ["--seconds", "0"],
    ["--seconds", "abc"],
    ["--actors", "1,x"],
    ["--hidden", "64,-1"],
    ["--capacity", "0"],
    ["--network", "resnet"],
    ["--amp", "fp8"],
    ["--network", "nature_cnn", "--only", "learner"],  # CartPole has no image observations
    ["--device", "tpu"],
    ["--no-such-flag"],
])
def test_bad_arguments_raise_bad_input(argv: list[str]) -> None:
    with pytest.raises(BadInput):
        run_bench(argv)


def test_bad_argument_exits_2_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asyncql_cli", "bench", "--only", "nonsense"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncql: error:") and "--only" in lines[0]

"""`make gpu-check` (benchmarks/gpu_check.py) on a machine without CUDA: it says plainly that CUDA
was absent, runs the CPU parts (versions, the autocast probe, the update matrix on CPU), skips
the rest with a reason, writes one JSON file and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, has_gpu

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
CPU_STEPS = {"versions", "autocast_probe", "matrix"}
CUDA_STEPS = {"cuda_tests", "round_trips", "learner_vs_bare", "actor_scaling", "cartpole_e2e", "pong"}


def test_make_gpu_check_runs_the_script() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "gpu-check: install\n\t$(PY) benchmarks/gpu_check.py $(ARGS)" in makefile


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_without_cuda_it_says_so_runs_the_cpu_parts_and_exits_0(tmp_path: Path) -> None:
    if has_gpu():
        pytest.skip("a CUDA GPU is present: there make gpu-check runs every step")
    out = tmp_path / "results" / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CUDA ABSENT" in proc.stdout and "nothing measured on a GPU" in proc.stdout
    report = json.loads(out.read_text())
    assert report["cuda"]["available"] is False and "CUDA ABSENT" in report["cuda"]["note"]
    steps = {step["name"]: step for step in report["steps"]}
    assert set(steps) == CPU_STEPS | CUDA_STEPS | {"compile"}
    for name in CPU_STEPS:
        assert steps[name]["status"] == "ok", steps[name]
    for name in CUDA_STEPS:
        assert steps[name]["status"] == "skipped" and steps[name]["reason"].startswith("CUDA absent: ")
    assert steps["compile"] == {"name": "compile", "status": "skipped", "reason": "--quick"}
    assert report["summary"] == {"ok": 3, "failed": 0, "timeout": 0, "skipped": 7}

    assert steps["versions"]["result"]["torch"]
    probe = steps["autocast_probe"]["result"]["cpu-bfloat16"]["asyncql_autocast"]
    assert probe["without_gradient"] == [] and probe["q_dtype"] == "torch.float32"
    cases = steps["matrix"]["result"]["cases"]
    assert {case["case"] for case in cases} == {f"{network}/{amp}/{buffer}" for network in
                                                ("mlp", "nature_cnn_dueling", "mlp_layer_norm")
                                                for amp in ("off", "bf16") for buffer in ("uniform", "prioritized")}
    for case in cases:
        assert case["updates"] == 3 and case["problems"] == [], case
        if case["case"].split("/")[1] == "bf16":
            assert case["comparison"]["ok"] and case["comparison"]["against"] == "cpu float32", case

"""Bad input through the real `asyncql` CLI (a subprocess per case, cwd = tmp_path).

Contract (DESIGN.md, exit codes): bad input exits 2 with exactly one line on stderr,
`asyncql: error: ...`, naming what is wrong, and no traceback anywhere. Every case must
fail before training starts (no checkpoints, no summary.json; `run_cli`'s timeout would
catch a run that trains) and leave no process behind (`run_cli` checks the child's whole
process group after it exits).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import bad_input_line, config_groups, has_gpu, run_cli

TESTS_DIR = Path(__file__).resolve().parent
BAD_INPUT_TIMEOUT = 30.0  # generous on a loaded 2-core box; a bad input takes a few seconds


def _assert_no_training(root: Path) -> None:
    started = [p for pattern in ("checkpoints", "summary.json", "events.out.tfevents.*")
               for p in root.rglob(pattern)]
    assert not started, f"training started: {started}"


# (test id, CLI args after `asyncql`, substrings the error line must contain)
# `{run}` in an arg is replaced by the test's run dir.
TRAIN_CASES = [
    ("unknown-env-id", ["env=gym", "env.id=NoSuchEnv-v0"], ["env.id", "NoSuchEnv-v0"]),
    ("continuous-actions", ["env=gym", "env.id=Pendulum-v1"],
     ["Pendulum-v1", "Box action space", "needs a Discrete action space"]),
    ("text-observations", ["env=gym", "env.id=broken_envs:TextObservations-v0"],
     ["TextObservations-v0", "Text observation space"]),
    ("gym-env-without-id", ["env=gym"], ["env.id", "required"]),
    ("unknown-key", ["algo.nope=1"], ["unknown config key algo.nope"]),
    # typos, with and without Hydra's `+`: one line naming the key meant, never Hydra's "use +" hint
    ("typo", ["algo.lerning_rate=0.1"], ["unknown config key algo.lerning_rate", "(did you mean algo.lr?)"]),
    ("typo-with-plus", ["+algo.lerning_rate=0.1"], ["unknown config key algo.lerning_rate", "algo.lr?"]),
    ("typo-of-a-section", ["algoo.gamma=0.9"], ["unknown config key algoo.gamma", "algo.gamma?"]),
    ("typo-nested", ["+env.atari.noop=3"], ["unknown config key env.atari.noop", "env.atari.noop_max?"]),
    ("typo-at-the-top", ["seeed=3"], ["unknown config key seeed", "(did you mean seed?)"]),
    ("another-tool's-name", ["+algo.learning_rate=3e-4"], ["unknown config key algo.learning_rate", "algo.lr?"]),
    ("wrong-type", ["algo.lr=abc"], ["algo.lr", "abc"]),
    ("gamma-above-1", ["algo.gamma=1.5"], ["algo.gamma=1.5"]),
    ("zero-capacity", ["buffer.capacity=0"], ["buffer.capacity=0"]),
    ("negative-actors", ["parallelism.num_actors=-1"], ["parallelism.num_actors=-1"]),
    ("batch-above-capacity",
     ["algo.batch_size=1000", "buffer.capacity=600", "parallelism.num_actors=1"],
     ["algo.batch_size=1000", "buffer.capacity=600"]),
    ("unknown-loss", ["algo.loss=foo"], ["algo.loss", "foo"]),
    ("unknown-group-option", ["env=NoSuch"], ["env/NoSuch"]),
    ("replay-larger-than-memory", ["buffer.capacity=2000000000", "train.learning_starts=1000"],
     ["buffer.capacity", "MiB"]),
    ("unknown-atari-game", ["env=atari", "env.id=ALE/NoSuchGame-v5"], ["env.id", "ALE/NoSuchGame-v5"]),
    ("atari-with-mlp", ["env=Pong", "network=mlp"], ["ALE/Pong-v5", "network=mlp", "nature_cnn"]),
]


@pytest.mark.parametrize(
    ("args", "expected"), [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES]
)
def test_train_bad_input(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    rc, out, err = run_cli("train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                           timeout=BAD_INPUT_TIMEOUT, env={"PYTHONPATH": str(TESTS_DIR)})
    assert "Traceback" not in out + err, err
    line = bad_input_line(err)
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"
    assert "To append to your config use" not in line
    assert rc == 2, (rc, err)
    _assert_no_training(tmp_path)


def test_cuda_learner_without_gpu(tmp_path: Path) -> None:
    if has_gpu():
        pytest.skip("a CUDA GPU is present")
    rc, out, err = run_cli("train", "parallelism.learner_device=cuda", f"hydra.run.dir={tmp_path / 'run'}",
                           cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    assert "Traceback" not in out + err
    line = bad_input_line(err)
    assert "parallelism.learner_device" in line and "no CUDA GPU" in line, line
    assert rc == 2
    _assert_no_training(tmp_path)


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_unwritable_run_dir(tmp_path: Path, where: str) -> None:
    if where == "proc":  # nothing can be created in /proc, even by root
        run_dir = Path("/proc/asyncql_forbidden")
    else:  # a regular file where a parent directory should be (a read-only dir does not stop root)
        (tmp_path / "a_file").write_text("not a directory\n")
        run_dir = tmp_path / "a_file" / "run"
    rc, out, err = run_cli("train", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    assert "Traceback" not in out + err, err
    line = bad_input_line(err)
    assert "run directory" in line and "hydra.run.dir" in line, line
    assert rc == 2
    _assert_no_training(tmp_path)


def test_unknown_verb(tmp_path: Path) -> None:
    rc, out, err = run_cli("frobnicate", cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    assert "Traceback" not in out + err
    line = bad_input_line(err)
    assert "frobnicate" in line and "train" in line, line
    assert rc == 2


def test_eval_missing_run_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_run"
    rc, out, err = run_cli("eval", f"run_dir={missing}", cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    assert "Traceback" not in out + err
    line = bad_input_line(err)
    assert "no_such_run" in line and "does not exist" in line, line
    assert rc == 2
    assert not missing.exists()


def test_eval_dir_without_hydra_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "not_a_run"
    run_dir.mkdir()
    rc, out, err = run_cli("eval", str(run_dir), cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    assert "Traceback" not in out + err
    line = bad_input_line(err)
    assert "not_a_run" in line and ".hydra" in line, line
    assert rc == 2
    assert not (run_dir / "eval.json").exists()


def test_train_help_lists_the_groups(tmp_path: Path) -> None:
    rc, out, err = run_cli("train", "--help", cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    assert rc == 0, err
    assert "Traceback" not in out + err
    groups_section = out.split("== Config groups", 1)[1].split("== Config ==", 1)[0]
    listed = dict(line.split(":", 1) for line in groups_section.splitlines() if ":" in line)
    for group, options in config_groups().items():
        assert group in listed, f"group {group} missing from --help:\n{groups_section}"
        shown = {o.strip() for o in listed[group].split(",")}
        assert set(options) <= shown, (group, options, shown)
    assert {"env", "network", "buffer", "parallelism"} <= set(listed)
    assert not (tmp_path / "runs").exists()


def test_train_cfg_job_prints_config_without_training(tmp_path: Path) -> None:
    rc, out, err = run_cli("train", "--cfg", "job", "env=gym", "env.id=Acrobot-v1", "algo.lr=0.0003",
                           cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    assert rc == 0, err
    assert "Traceback" not in out + err
    lines = out.splitlines()
    assert "env:" in lines and "algo:" in lines, out
    assert "  id: Acrobot-v1" in lines and "  lr: 0.0003" in lines, out
    assert "hydra:" not in lines  # --cfg job: the job's config only
    assert not (tmp_path / "runs").exists()
    _assert_no_training(tmp_path)


def test_training_elsewhere_than_linux_is_one_line_naming_what_runs(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from asyncql_cli.cli import main as cli_main

    monkeypatch.setattr(cli_main.platform, "system", lambda: "Darwin")
    for verb in ("train", "bench"):
        with pytest.raises(SystemExit) as exited:
            cli_main.main([verb])
        assert exited.value.code == 2
        line = bad_input_line(capsys.readouterr().err)
        assert "Linux" in line and "Darwin" in line and "asyncql eval" in line
    cli_main.check_system("eval")  # evaluation runs anywhere torch and gymnasium do

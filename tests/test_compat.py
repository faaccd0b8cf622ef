"""compat.py: each private API asyncql uses, on its private path and on its public fallback.

The torch tensor-list and Adam paths are checked against each other where they are used
(test_losses.py, test_networks.py, test_optim.py, the `paths` fixtures); this file covers the
rest: shared memory allocation, the forkserver handle, the exit without teardown, and that a
private path which fails with a TypeError (a changed signature) switches to the public one for
good.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from asyncql_cli import compat
from asyncql_cli.procfs import pid_running


@pytest.fixture(params=[True, False], ids=["private", "public"])
def private(request: pytest.FixtureRequest) -> bool:
    with compat.use_private(request.param):
        yield request.param


def test_shared_uint8_is_zeroed_shared_memory(private: bool) -> None:
    frames = compat.shared_uint8((3, 5, 7))
    assert frames.shape == (3, 5, 7) and frames.dtype == torch.uint8 and frames.is_shared()
    assert int(frames.sum()) == 0
    frames[1, 2, 3] = 9
    assert int(frames.sum()) == 9


def _nothing() -> None:
    return None


def test_the_forkserver_is_stopped_through_the_private_handle_only(private: bool) -> None:
    ctx = multiprocessing.get_context("forkserver")
    child = ctx.Process(target=_nothing)
    child.start()
    child.join(timeout=60)
    with compat.use_private(True):
        pid = compat.forkserver_pid()
    assert pid is not None and pid_running(pid)
    killed: list[int] = []

    def kill(target: int) -> None:
        killed.append(target)
        os.kill(target, 9)

    stopped = compat.stop_forkserver(kill)
    if private:
        assert stopped and killed == [pid] and not pid_running(pid)
        assert compat.forkserver_pid() is None
    else:  # the public path cannot reach it: it is left to exit with this process
        assert not stopped and killed == [] and pid_running(pid)
        with compat.use_private(True):
            assert compat.stop_forkserver(kill)


@pytest.mark.parametrize("public_only", ["0", "1"])
def test_exit_without_teardown_runs_the_exit_hooks_and_keeps_the_code(public_only: str) -> None:
    code = ("import atexit\nfrom asyncql_cli.compat import exit_without_teardown\n"
            "atexit.register(print, 'hook ran', flush=True)\nexit_without_teardown(3)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ASYNCQL_PUBLIC_APIS_ONLY": public_only})
    assert done.returncode == 3 and done.stdout.strip() == "hook ran", done


def test_a_changed_private_signature_switches_to_the_public_path_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def changed(*args: object) -> None:
        calls.append(args)
        raise TypeError("_foreach_copy_() got an unexpected keyword argument")  # a torch that changed it

    monkeypatch.setattr(torch, "_foreach_copy_", changed)
    monkeypatch.setattr(compat, "_broken", set())
    for _ in range(2):
        destination = [torch.zeros(3)]
        compat.foreach_copy_(destination, [torch.ones(3)])
        assert torch.equal(destination[0], torch.ones(3))
    assert len(calls) == 1  # tried once, then never again

"""shm/sync.py, the one module that decides memory ordering: every primitive on every backend
this machine has, and multi-process message-passing stress runs of the three protocols built on
it (ring commit, ring overwrite check, seqlock), one writer and one reader process each.

Each stress run goes on until its race window was really hit (a commit landing during a read, a
batch overwriting rows being gathered, a publish overlapping a copy), so a pass shows the check
was exercised, not just that nothing happened. On x86 a missing barrier cannot make these fail
(TSO hides it); on AArch64 they are the test that matters.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import pickle
import sys
import time
from typing import Any

import numpy as np
import pytest
import torch

from asyncql_cli.shm import sync

NAMES = ("atomicshm", "x86-tso", "libatomic")
MAKERS = {"atomicshm": sync._atomicshm, "x86-tso": sync._x86_tso, "libatomic": sync._libatomic}
MIN_SECONDS = 0.3  # each stress run lasts at least this long ...
WINDOWS_WANTED = 3  # ... and until its race window was hit this often
MAX_SECONDS = 120.0  # a run that never hits its window fails after this (a loaded machine: generous)
CTL_CURSOR, CTL_STOP, CTL_READY = 0, 1, 2


def _available(name: str) -> bool:
    try:
        MAKERS[name]()
        return True
    except (ImportError, OSError, AttributeError):
        return False


BACKENDS = [pytest.param(n, marks=pytest.mark.skipif(not _available(n), reason=f"{n} unavailable here"))
            for n in NAMES]


def _accessors(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    bind, fence_acquire, fence_release = MAKERS[name]()
    return {**bind(tensor), "fence_acquire": fence_acquire, "fence_release": fence_release}


def _shared(n: int = 4) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int64).share_memory_()


# -- primitives ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("value", [0, 1, -1, 2**62 + 3, 2**63 - 1, -(2**63)])
def test_store_load_roundtrip(name: str, value: int) -> None:
    tensor = _shared()
    a = _accessors(name, tensor)
    a["store_release"](1, value)
    assert a["load_acquire"](1) == value and a["load_relaxed"](1) == value
    assert tensor[1].item() == value  # the same memory the tensor shows
    a["store_relaxed"](2, value)
    assert a["load_relaxed"](2) == value and tensor.tolist() == [0, value, value, 0]
    tensor[3] = 7  # plain writes through the tensor are seen too
    assert a["load_acquire"](3) == 7 and a["load_relaxed"](-1) == 7


@pytest.mark.parametrize("name", BACKENDS)
def test_load_all_is_a_copy(name: str) -> None:
    tensor = _shared(5)
    a = _accessors(name, tensor)
    for i in range(5):
        a["store_relaxed"](i, i * 10 - 20)
    values = a["load_all_relaxed"]()
    assert values.dtype == np.int64 and values.tolist() == [-20, -10, 0, 10, 20]
    values[0] = 99
    assert a["load_relaxed"](0) == -20
    assert a["fence_acquire"]() is None and a["fence_release"]() is None


@pytest.mark.parametrize("name", BACKENDS)
def test_bounds_are_checked(name: str) -> None:
    tensor = _shared(3)
    a = _accessors(name, tensor)
    for bad in (3, -4, 1000):
        with pytest.raises(IndexError):
            a["load_acquire"](bad)
        with pytest.raises(IndexError):
            a["store_release"](bad, 1)
    assert tensor.tolist() == [0, 0, 0]


def test_the_array_wrapper_on_this_machine() -> None:
    a = sync.AtomicInt64Array(_shared(3))
    a.store_release(0, 5)
    a.store_relaxed(2, -3)
    assert a.load_acquire(0) == 5 and a.load_all_acquire().tolist() == [5, 0, -3] and len(a) == 3
    assert a.__getstate__() == {"tensor": a.tensor}
    copy = pickle.loads(pickle.dumps(a))
    assert set(copy.__dict__) == {"tensor"}  # accessors are made again lazily, per process
    assert copy.load_acquire(0) == 5
    with pytest.raises(AttributeError):
        _ = copy.no_such_thing
    for bad in (torch.zeros(4, dtype=torch.int32), torch.zeros(4, 2, dtype=torch.int64)[:, 0]):
        with pytest.raises(ValueError):
            sync.AtomicInt64Array(bad)
    assert sync.BACKEND in NAMES and "load" in sync.fence_acquire.__doc__


def test_a_forced_unknown_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCQL_SYNC_BACKEND", "bogus")
    with pytest.raises(ImportError, match="bogus"):
        sync._select()


def test_no_silent_fallback_to_plain_accesses_off_x86(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off x86 without atomicshm and libatomic: ImportError, never plain loads and stores."""
    monkeypatch.delenv("ASYNCQL_SYNC_BACKEND", raising=False)
    monkeypatch.setattr(sync, "_X86", False)
    monkeypatch.setitem(sys.modules, "atomicshm", None)  # its import fails

    def no_library(*args: Any, **kwargs: Any) -> None:
        raise OSError("libatomic.so.1: cannot open shared object file")

    monkeypatch.setattr(sync.ctypes, "CDLL", no_library)
    with pytest.raises(ImportError, match="x86-tso"):
        sync._select()


# -- multi-process stress (children select their backend, then run one side) ------------------
def _use(name: str) -> Any:
    """This child's sync module, on backend `name` (a fresh child: nothing else holds it)."""
    os.environ["ASYNCQL_SYNC_BACKEND"] = name
    return importlib.reload(sync)


def _array(s: Any, tensor: torch.Tensor) -> Any:
    return s.AtomicInt64Array(tensor)


def _window_reached(start: float, windows: int) -> bool:
    elapsed = time.monotonic() - start
    return (elapsed >= MIN_SECONDS and windows >= WINDOWS_WANTED) or elapsed > MAX_SECONDS


def _wait_ready(ctl: Any) -> None:
    deadline = time.monotonic() + MAX_SECONDS
    while ctl.load_acquire(CTL_READY) == 0 and time.monotonic() < deadline:
        time.sleep(0)


def _commit_writer(name: str, ctl_t: torch.Tensor, payload: torch.Tensor, out: Any) -> None:
    """Ring commit: data, then store_release(cursor)."""
    s = _use(name)
    ctl = _array(s, ctl_t)
    _wait_ready(ctl)
    k = 0
    while ctl.load_acquire(CTL_STOP) == 0:
        k += 1
        payload.fill_(k)
        ctl.store_release(CTL_CURSOR, k)
    out.put(("writer", s.BACKEND, k))


def _commit_reader(name: str, ctl_t: torch.Tensor, payload: torch.Tensor, out: Any) -> None:
    """load_acquire(cursor), then data: every element is at least that new."""
    s = _use(name)
    ctl = _array(s, ctl_t)
    ctl.store_release(CTL_READY, 1)
    reads = stale = windows = 0
    start = time.monotonic()
    while not _window_reached(start, windows):
        c = ctl.load_acquire(CTL_CURSOR)
        low = int(payload.min())
        reads += 1
        stale += low < c
        s.fence_acquire()
        windows += ctl.load_relaxed(CTL_CURSOR) != c  # a commit landed during the read
    ctl.store_release(CTL_STOP, 1)
    out.put(("reader", s.BACKEND, {"reads": reads, "stale": stale, "windows": windows}))


RING, BATCH, WIDTH, DRAWS = 256, 16, 64, 32


def _ring_writer(name: str, ctl_t: torch.Tensor, ring: torch.Tensor, out: Any) -> None:
    """Batches of BATCH rows (row p holds p): fence_release, rows, store_release(cursor)."""
    s = _use(name)
    ctl = _array(s, ctl_t)
    _wait_ready(ctl)
    start = 0
    offsets = torch.arange(BATCH)
    while ctl.load_acquire(CTL_STOP) == 0:
        s.fence_release()  # the previous commit is ordered before these rows' stores
        positions = start + offsets
        ring.index_copy_(0, positions % RING, positions.unsqueeze(1).expand(BATCH, WIDTH))
        ctl.store_release(CTL_CURSOR, start + BATCH)
        start += BATCH
    out.put(("writer", s.BACKEND, start))


def _ring_reader(name: str, ctl_t: torch.Tensor, ring: torch.Tensor, out: Any) -> None:
    """A sampler: draw committed positions outside the guard band, gather, fence_acquire,
    re-read the cursor, keep only rows no batch begun meanwhile could have reached."""
    s = _use(name)
    ctl = _array(s, ctl_t)
    ctl.store_release(CTL_READY, 1)
    rng = np.random.default_rng(0)
    kept = rejected = violations = 0
    start = time.monotonic()
    while not _window_reached(start, rejected):
        before = ctl.load_acquire(CTL_CURSOR)
        oldest = max(0, before - RING + BATCH)
        if before <= oldest:
            continue
        positions = torch.from_numpy(rng.integers(oldest, before, DRAWS))
        rows = ring.index_select(0, positions % RING)
        s.fence_acquire()
        after = ctl.load_relaxed(CTL_CURSOR)
        keep = positions >= after + BATCH - RING
        intact = (rows == positions.unsqueeze(1)).all(dim=1)
        kept += int(keep.sum())
        rejected += int((~keep).sum())
        violations += int((keep & ~intact).sum())  # an overwritten row the check would have kept
    ctl.store_release(CTL_STOP, 1)
    out.put(("reader", s.BACKEND, {"kept": kept, "rejected": rejected, "violations": violations}))


def _seqlock_writer(name: str, ctl_t: torch.Tensor, data: torch.Tensor, out: Any) -> None:
    s = _use(name)
    ctl = _array(s, ctl_t)
    _wait_ready(ctl)
    k = 0
    while ctl.load_acquire(CTL_STOP) == 0:
        k += 1
        ctl.store_relaxed(CTL_CURSOR, 2 * k - 1)  # odd: writing
        s.fence_release()  # ... ordered before the data stores
        data.fill_(float(k))
        ctl.store_release(CTL_CURSOR, 2 * k)  # even: the data is complete
    out.put(("writer", s.BACKEND, k))


def _seqlock_reader(name: str, ctl_t: torch.Tensor, data: torch.Tensor, out: Any) -> None:
    s = _use(name)
    ctl = _array(s, ctl_t)
    ctl.store_release(CTL_READY, 1)
    accepted = retried = violations = 0
    start = time.monotonic()
    while not _window_reached(start, retried):
        v1 = ctl.load_acquire(CTL_CURSOR)
        if v1 % 2:
            retried += 1
            continue
        snap = data.clone()
        s.fence_acquire()
        if ctl.load_relaxed(CTL_CURSOR) == v1:
            accepted += 1
            violations += bool(snap.min() != snap.max()) or float(snap[0]) != v1 // 2
        else:
            retried += 1  # a publish overlapped the copy: thrown away
    ctl.store_release(CTL_STOP, 1)
    out.put(("reader", s.BACKEND, {"accepted": accepted, "retried": retried, "violations": violations}))


@pytest.fixture(scope="module")
def ctx() -> Any:
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "numpy", "asyncql_cli.shm.sync", "test_sync"])
    return context


def _run(ctx: Any, writer: Any, reader: Any, shared: torch.Tensor, name: str) -> tuple[int, dict[str, int]]:
    out = ctx.Queue()
    ctl = _shared(3)
    procs = [ctx.Process(target=f, args=(name, ctl, shared, out), daemon=True) for f in (reader, writer)]
    for proc in procs:
        proc.start()
    try:
        results = {role: (backend, value) for role, backend, value in
                   (out.get(timeout=MAX_SECONDS + 60) for _ in procs)}
    finally:
        ctl[CTL_STOP] = 1
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert results["writer"][0] == results["reader"][0] == name
    return results["writer"][1], results["reader"][1]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.stress
def test_ring_commit_makes_the_rows_below_the_cursor_visible(ctx: Any, name: str) -> None:
    commits, r = _run(ctx, _commit_writer, _commit_reader, torch.zeros(4096, dtype=torch.int64).share_memory_(),
                      name)
    assert commits > 0 and r["reads"] > 0 and r["stale"] == 0
    assert r["windows"] >= WINDOWS_WANTED, r  # commits really landed during reads


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.stress
def test_ring_recheck_rejects_every_row_a_concurrent_batch_overwrote(ctx: Any, name: str) -> None:
    ring = torch.full((RING, WIDTH), -1, dtype=torch.int64).share_memory_()
    written, r = _run(ctx, _ring_writer, _ring_reader, ring, name)
    assert written > RING and r["kept"] > 0 and r["violations"] == 0
    assert r["rejected"] >= WINDOWS_WANTED, r  # the writer really overran rows being gathered


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.stress
def test_seqlock_never_accepts_a_torn_copy(ctx: Any, name: str) -> None:
    data = torch.zeros(8192, dtype=torch.float32).share_memory_()
    published, r = _run(ctx, _seqlock_writer, _seqlock_reader, data, name)
    assert published > 0 and r["accepted"] > 0 and r["violations"] == 0
    assert r["retried"] >= WINDOWS_WANTED, r  # publishes really overlapped copies

"""Shared-memory replay: what goes in is exactly what can come out, even under concurrent writers.

Every row written here is built from one integer id (see tests/replay_workers.py), so any
sampled row can be checked on its own: whole or torn, which segment and logical position it
belongs to, and whether that position is one the sampler may hand out.
"""

from __future__ import annotations

import math
import signal
import time

import pytest
import torch
import torch.multiprocessing as mp
from proc_utils import JOIN_SECONDS, join_or_kill
from replay_workers import (
    assert_rows_whole,
    continuous_writer,
    decode_id,
    half_writer,
    row_id,
    rows_for_ids,
    write_uncommitted,
)

from asyncql_cli.replay.transitions import ReplayStorage
from asyncql_cli.replay.uniform import UniformSampler

OBS_DIM = 3


def write_ids(storage: ReplayStorage, segment: int, ids: list[int], chunk: int) -> None:
    for begin in range(0, len(ids), chunk):
        storage.write(segment, rows_for_ids(torch.tensor(ids[begin:begin + chunk]), storage.obs.shape[1]))


def sample_ids(sampler: UniformSampler, batches: int, batch_size: int) -> torch.Tensor:
    out = []
    for _ in range(batches):
        batch = sampler.sample(batch_size)
        out.append(assert_rows_whole(batch))
    return torch.cat(out)


def chi2_critical(df: int, z: float = 4.0) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at standard-normal score z."""
    return df * (1.0 - 2.0 / (9 * df) + z * math.sqrt(2.0 / (9 * df))) ** 3


# ---------------------------------------------------------------- single process


def test_empty_storage_samples_nothing():
    storage = ReplayStorage(capacity=32, num_segments=2, write_batch=4, obs_shape=(OBS_DIM,))
    assert storage.size() == 0
    assert UniformSampler(storage, seed=0).sample(8) is None


def test_one_segment_returns_exactly_the_written_rows():
    seg_size, write_batch = 32, 4
    storage = ReplayStorage(capacity=seg_size, num_segments=1, write_batch=write_batch, obs_shape=(OBS_DIM,))
    sampler = UniformSampler(storage, seed=1)

    write_ids(storage, 0, list(range(1, 11)), chunk=3)  # 10 rows, well inside the ring
    assert storage.size() == 10
    batch = sampler.sample(64)
    ids = assert_rows_whole(batch)
    assert (batch.index == ids - 1).all()  # row with id i was the (i-1)-th write, in slot i-1
    assert (torch.from_numpy(batch.logical) == ids - 1).all()  # and it is at logical position i-1
    seen = set(sample_ids(sampler, 50, 64).tolist())
    assert seen == set(range(1, 11))

    write_ids(storage, 0, list(range(11, 101)), chunk=7)  # 100 rows in all: the ring wrapped 3 times
    assert storage.size() == seg_size
    batch = sampler.sample(256)
    ids = assert_rows_whole(batch)
    assert (batch.index == (ids - 1) % seg_size).all()
    assert (torch.from_numpy(batch.logical) == ids - 1).all()
    seen = set(sample_ids(sampler, 100, 64).tolist())
    # Only the newest segment_size - write_batch rows may come back: the write_batch oldest slots
    # of the ring are the ones the next write overwrites.
    assert seen == set(range(101 - (seg_size - write_batch), 101))


def test_several_segments_return_only_their_newest_rows():
    seg_size, write_batch, segments = 16, 4, 3
    storage = ReplayStorage(seg_size * segments, segments, write_batch, (OBS_DIM,))
    sampler = UniformSampler(storage, seed=2)
    counts = [5, 16, 50]  # part-filled, exactly full, wrapped three times
    for seg, count in enumerate(counts):
        ids = row_id(torch.arange(count), seg, segments).tolist()
        write_ids(storage, seg, ids, chunk=3)
    assert storage.size() == 5 + 16 + 16
    assert storage.committed().tolist() == counts
    assert [storage.cursor(seg) for seg in range(segments)] == counts

    expected = set()
    for seg, count in enumerate(counts):
        first = max(0, count - (seg_size - write_batch))
        expected |= set(row_id(torch.arange(first, count), seg, segments).tolist())
    drawn = []
    for _ in range(100):
        batch = sampler.sample(64)
        ids = assert_rows_whole(batch)
        writer, pos = decode_id(ids, segments)
        assert (batch.index == writer * seg_size + pos % seg_size).all()
        assert (torch.from_numpy(batch.logical) == pos).all()
        drawn.append(ids)
    assert set(torch.cat(drawn).tolist()) == expected


def test_size_counts_committed_rows_across_wrap_around():
    seg_size, segments = 8, 2
    storage = ReplayStorage(seg_size * segments, segments, 2, (OBS_DIM,))
    written = [0, 0]
    for step in range(40):
        seg = 0 if step % 3 else 1  # segment 0 gets about twice the rows of segment 1
        count = 1 + step % 2
        pos = torch.arange(written[seg], written[seg] + count)
        storage.write(seg, rows_for_ids(row_id(pos, seg, segments), OBS_DIM))
        written[seg] += count
        assert storage.size() == min(written[0], seg_size) + min(written[1], seg_size)
    assert written[0] > 2 * seg_size and written[1] > seg_size


def test_uncommitted_rows_are_never_sampled():
    seg_size, write_batch = 16, 4
    storage = ReplayStorage(seg_size, 1, write_batch, (OBS_DIM,))
    write_ids(storage, 0, list(range(1, 31)), chunk=4)  # 30 committed rows
    write_uncommitted(storage, 0, rows_for_ids(torch.tensor([31, 32, 33, 34]), OBS_DIM))
    assert storage.size() == seg_size
    seen = set(sample_ids(UniformSampler(storage, seed=3), 100, 64).tolist())
    assert seen == set(range(31 - (seg_size - write_batch), 31))


def test_rows_overwritten_while_gathering_are_redrawn():
    """A write that starts between the sampler's cursor snapshot and its copy tears some rows;
    the sampler must notice and redraw them."""
    seg_size, write_batch = 16, 4
    storage = ReplayStorage(seg_size, 1, write_batch, (OBS_DIM,))
    write_ids(storage, 0, list(range(1, 17)), chunk=4)  # positions 0..15 (ids 1..16)
    original = storage.gather
    calls = []

    def gather_during_writes(slots):
        if not calls:
            write_ids(storage, 0, list(range(17, 25)), chunk=4)  # positions 16..23 committed
            half = rows_for_ids(torch.tensor([25, 26, 27, 28]), OBS_DIM)  # position 24..27: obs only
            torn_slots = torch.arange(24, 28) % seg_size
            storage.obs.index_copy_(0, torn_slots, half["obs"])
        calls.append(len(slots))
        return original(slots)

    storage.gather = gather_during_writes
    sampler = UniformSampler(storage, seed=4)
    batch = sampler.sample(256)
    ids = assert_rows_whole(batch)
    assert len(calls) >= 2, "the first gather overlapped a write but nothing was redrawn"
    assert sampler.redraws > 0
    assert (batch.index == (ids - 1) % seg_size).all()
    assert (torch.from_numpy(batch.logical) == ids - 1).all()
    assert set(ids.tolist()) <= set(range(13, 25))  # positions 12..23


def test_sampler_keeps_up_with_a_writer_that_laps_it():
    """If a writer commits a whole segment while the sampler copies, every row of the sampler's
    first snapshot is gone; redraws must come from the current rows, not loop forever."""
    seg_size, write_batch = 16, 4
    storage = ReplayStorage(seg_size, 1, write_batch, (OBS_DIM,))
    write_ids(storage, 0, list(range(1, 17)), chunk=4)
    original = storage.gather
    calls = []

    def gather_while_lapped(slots):
        calls.append(len(slots))
        if len(calls) == 1:
            write_ids(storage, 0, list(range(17, 33)), chunk=4)  # a full lap: positions 16..31
        if len(calls) > 50:
            raise RuntimeError("sampler keeps redrawing rows that are already overwritten")
        return original(slots)

    storage.gather = gather_while_lapped
    sampler = UniformSampler(storage, seed=5)
    batch = sampler.sample(128)
    ids = assert_rows_whole(batch)
    assert sampler.redraws >= 128, "every row of the first draw was overwritten: all are drawn again"
    assert (batch.index == (ids - 1) % seg_size).all()
    assert (torch.from_numpy(batch.logical) == ids - 1).all()
    assert set(ids.tolist()) <= set(range(33 - (seg_size - write_batch), 33))


def test_sampling_is_uniform_over_rows_and_segments():
    seg_size, write_batch, segments = 64, 4, 3
    storage = ReplayStorage(seg_size * segments, segments, write_batch, (OBS_DIM,))
    counts = [10, 30, 100]  # sampleable rows: 10, 30 and seg_size - write_batch = 60
    for seg, count in enumerate(counts):
        write_ids(storage, seg, row_id(torch.arange(count), seg, segments).tolist(), chunk=5)
    windows = [10, 30, 60]
    ids = sample_ids(UniformSampler(storage, seed=6), 2000, 50)
    draws = ids.numel()
    writer, pos = decode_id(ids, segments)

    per_segment = torch.bincount(writer, minlength=segments).double()
    expected = torch.tensor(windows, dtype=torch.float64) * draws / sum(windows)
    chi2 = float(((per_segment - expected) ** 2 / expected).sum())
    assert chi2 < chi2_critical(segments - 1), (per_segment.tolist(), expected.tolist())

    # Within the 100 sampleable rows every row is equally likely.
    per_row = torch.bincount(ids, minlength=int(ids.max()) + 1).double()
    valid = torch.cat([row_id(torch.arange(c - w, c), s, segments) for s, (c, w) in enumerate(zip(counts, windows))])
    assert per_row.sum() == per_row[valid].sum(), "a row outside the sampleable window came back"
    row_expected = draws / sum(windows)
    row_chi2 = float(((per_row[valid] - row_expected) ** 2 / row_expected).sum())
    assert row_chi2 < chi2_critical(sum(windows) - 1)


# ---------------------------------------------------------------- several processes


@pytest.mark.slow
@pytest.mark.stress
def test_concurrent_writers_never_yield_torn_or_uncommitted_rows():
    """Two writers lap a tiny ring hundreds of times while this process samples; one of them is
    SIGKILLed half way, and a third commits some rows, copies a batch without committing it and
    exits. Every sampled row must be whole, committed and not yet overwritten."""
    seg_size, write_batch, writers, obs_dim = 64, 8, 3, 32
    committed_rows, uncommitted_rows = 200, 6
    storage = ReplayStorage(seg_size * writers, writers, write_batch, (obs_dim,))
    stop = torch.zeros(1, dtype=torch.int64).share_memory_()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=continuous_writer, args=(storage, 0, writers, stop, 10, 2_000_000), daemon=True),
        ctx.Process(target=continuous_writer, args=(storage, 1, writers, stop, 11, 2_000_000), daemon=True),
        ctx.Process(target=half_writer, args=(storage, 2, writers, committed_rows, uncommitted_rows), daemon=True),
    ]
    sampler = UniformSampler(storage, seed=7)
    batches, batch_size, min_laps = 4000, 32, 100
    sampled = torch.zeros(writers, dtype=torch.int64)
    try:
        for proc in procs:
            proc.start()
        # a guard against a hang only (pytest's timeout is 300 s): progress is awaited, not timed
        deadline = time.monotonic() + 240
        while (storage.committed()[:2] < 4 * seg_size).any() or procs[2].exitcode is None:
            assert procs[0].is_alive() and procs[1].is_alive(), "a continuous writer died"
            assert time.monotonic() < deadline, "writers did not start"
            time.sleep(0.01)
        assert procs[2].exitcode == 0
        # The half writer really left a copied but uncommitted batch behind in its ring.
        assert storage.cursor(2) == committed_rows
        tail = 2 * seg_size + torch.arange(committed_rows, committed_rows + uncommitted_rows) % seg_size
        expected_tail = row_id(torch.arange(committed_rows, committed_rows + uncommitted_rows), 2, writers)
        assert (storage.reward[tail] == expected_tail.float()).all()

        # Sample `batches` batches, half before and half after writer 1 is killed; go on until
        # both continuous writers have lapped their ring at least `min_laps` times.
        killed_at, killed_batch, i = None, batches, 0
        while i < killed_batch + batches // 2 or storage.cursor(0) < min_laps * seg_size:
            assert procs[0].is_alive(), "writer 0 stopped before lapping its ring often enough"
            assert time.monotonic() < deadline, f"writers too slow: cursors {storage.committed().tolist()}"
            if killed_at is None and i >= batches // 2 and storage.cursor(1) >= min_laps * seg_size:
                procs[1].kill()  # SIGKILL, possibly in the middle of a batch
                procs[1].join(timeout=JOIN_SECONDS)
                killed_at, killed_batch = storage.cursor(1), i
            i += 1
            before = torch.from_numpy(storage.committed())
            batch = sampler.sample(batch_size)
            after = torch.from_numpy(storage.committed())
            ids = assert_rows_whole(batch)
            writer, pos = decode_id(ids, writers)
            segment = batch.index // seg_size
            assert (writer == segment).all(), "a row is in another writer's segment"
            assert (batch.index == segment * seg_size + pos % seg_size).all(), "a row is in the wrong slot"
            assert (torch.from_numpy(batch.logical) == pos).all(), "a row's logical position is wrong"
            assert (pos < after[segment]).all(), "an uncommitted row was sampled"
            assert (pos >= before[segment] - (seg_size - write_batch)).all(), "an overwritable row was sampled"
            sampled += torch.bincount(segment, minlength=writers)
        stop[0] = 1
        procs[0].join(timeout=JOIN_SECONDS)
        assert killed_at is not None and storage.cursor(1) == killed_at
        assert (sampled > 0).all()
        # the draws really raced the writers: some rows were overwritable when re-checked
        assert sampler.redraws > 0
    finally:
        stop[0] = 1
        join_or_kill(procs)
    assert not any(proc.is_alive() for proc in procs)
    assert procs[0].exitcode == 0 and procs[2].exitcode == 0
    assert procs[1].exitcode == -signal.SIGKILL

"""Child-process entry points and row encodings for the multi-process replay and parameter tests.

The functions run in processes started with torch.multiprocessing's spawn context, so they
live at the top level of an importable module (not in a test file).

Row encoding: writer `w` of `num_writers` stores the transition at logical position `pos` of
its segment with id = pos * num_writers + w + 1, and every field of the row is a function of
that id. A reader can therefore tell, from any single row, whether it is whole (all fields
agree), which writer wrote it and which logical position it belongs to.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from asyncql_cli.replay.batch import FIELDS
from asyncql_cli.replay.transitions import ReplayStorage
from asyncql_cli.shm.params import ParameterStore

NUM_ACTIONS = 7


def row_id(pos: torch.Tensor, writer: int, num_writers: int) -> torch.Tensor:
    return pos * num_writers + writer + 1


def decode_id(ids: torch.Tensor, num_writers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(writer, logical position) of integer ids."""
    return (ids - 1) % num_writers, (ids - 1) // num_writers


def discount_of(ids: torch.Tensor) -> torch.Tensor:
    """A value in [0, 1) that depends on the id and is exact in float32."""
    return (ids % 97).float() / 128.0


def rows_for_ids(ids: torch.Tensor, obs_dim: int) -> dict[str, torch.Tensor]:
    """Self-consistent rows: obs = id, next_obs = id + 0.5, action = id % 7, reward = id."""
    ids = ids.to(torch.int64)
    value = ids.to(torch.float32)
    return {
        "obs": value[:, None].expand(-1, obs_dim).contiguous(),
        "action": ids % NUM_ACTIONS,
        "reward": value.clone(),
        "next_obs": (value + 0.5)[:, None].expand(-1, obs_dim).contiguous(),
        "discount": discount_of(ids),
    }


def assert_rows_whole(batch: Any) -> torch.Tensor:
    """Every row equals the row written for its id; returns the ids."""
    assert torch.isfinite(batch.obs).all() and torch.isfinite(batch.next_obs).all()
    assert torch.isfinite(batch.reward).all() and torch.isfinite(batch.discount).all()
    assert (batch.action >= 0).all()
    ids = batch.reward.to(torch.int64)
    assert (ids.to(torch.float32) == batch.reward).all(), "reward is not an integer id"
    assert (ids >= 1).all(), "an unwritten (sentinel) or foreign row came back"
    assert (batch.obs == batch.reward[:, None]).all(), "obs does not match the row's id"
    assert (batch.next_obs == batch.reward[:, None] + 0.5).all(), "next_obs does not match the row's id"
    assert (batch.action == ids % NUM_ACTIONS).all(), "action does not match the row's id"
    assert (batch.discount == discount_of(ids)).all(), "discount does not match the row's id"
    return ids


def write_uncommitted(storage: ReplayStorage, segment: int, rows: dict[str, torch.Tensor]) -> None:
    """Store rows in the slots after the cursor without advancing it: what a writer that dies
    between copying a batch and committing it leaves behind (the row copy of `storage.write`
    without its commit; tests only: real writers go through `write`)."""
    count = rows["action"].shape[0]
    assert count <= storage.write_batch
    start = storage.cursor(segment)
    slots = segment * storage.segment_size + torch.arange(start, start + count) % storage.segment_size
    for name in FIELDS:
        getattr(storage, name).index_copy_(0, slots, rows[name])


def continuous_writer(
    storage: ReplayStorage, segment: int, num_writers: int, stop: torch.Tensor, seed: int, max_rows: int
) -> None:
    """Write batches of 1..2*write_batch rows into `segment` as fast as possible until `stop[0]`
    is set or `max_rows` rows are committed (ids stay exact in float32 below that)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    obs_dim = storage.obs.shape[1]
    while int(stop[0]) == 0:
        pos = storage.cursor(segment)  # our own cursor: this process is its only writer
        if pos >= max_rows:
            break
        count = int(rng.integers(1, 2 * storage.write_batch + 1))
        ids = row_id(torch.arange(pos, pos + count), segment, num_writers)
        storage.write(segment, rows_for_ids(ids, obs_dim))


def half_writer(
    storage: ReplayStorage, segment: int, num_writers: int, committed_rows: int, uncommitted_rows: int
) -> None:
    """Commit `committed_rows` rows, then copy `uncommitted_rows` more without committing them,
    then exit at once (no clean-up, like a crash)."""
    torch.set_num_threads(1)
    obs_dim = storage.obs.shape[1]
    ids = row_id(torch.arange(committed_rows), segment, num_writers)
    storage.write(segment, rows_for_ids(ids, obs_dim))
    extra = row_id(torch.arange(committed_rows, committed_rows + uncommitted_rows), segment, num_writers)
    write_uncommitted(storage, segment, rows_for_ids(extra, obs_dim))
    os._exit(0)


def param_model() -> nn.Module:
    """The network both sides of the parameter-store test build (about 50k parameters)."""
    return nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 160), nn.ReLU(), nn.Linear(160, 4))


def constant_publisher(store: ParameterStore, stop: torch.Tensor, max_updates: int, pause: float) -> None:
    """Publish update k = 1, 2, ... with every parameter equal to k, resting `pause` seconds
    between publishes (a learner does other work too), until `stop[0]` is set."""
    torch.set_num_threads(1)
    model = param_model()
    k = 0
    while int(stop[0]) == 0 and k < max_updates:
        k += 1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(k))
        store.publish(model, k)
        if pause > 0:
            time.sleep(pause)

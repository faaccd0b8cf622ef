"""Replay rows from an actor node's outbox to the learner node's replay.

The outbox is a storage of the replay's layout (same segments), written by this node's actors as
if it were the replay. The shipper, a thread of this node's agent, is one more reader of it: it
takes the rows committed since its last look (acquire loads of the cursors, shm/rings.py), copies
them, re-reads the cursors and keeps only rows no write can have reached meanwhile, and sends them,
their initial priorities included, to the learner's agent, which writes them into the same segment
of the replay (it is that segment's only writer there). A shipper that falls more than an outbox
behind loses the oldest rows; it counts them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from asyncql_cli.replay.uniform import overwritable

IDLE_SECONDS = 0.005  # the shipper's pause when no segment has new rows


@dataclass
class ShippingStats:
    rows: int = 0  # rows handed to the learner's agent
    lost: int = 0  # rows overwritten in the outbox before they could be shipped
    batches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[int, int]:
        """Rows shipped and lost since the last call."""
        with self.lock:
            rows, lost, self.rows, self.lost = self.rows, self.lost, 0, 0
            return rows, lost


class OutboxReader:
    """Committed, untouched rows of some segments of an outbox, in order, each row once."""

    def __init__(self, outbox: Any, segments: list[int], batch_rows: int):
        self.outbox, self.segments, self.batch_rows = outbox, segments, batch_rows
        self.shipped = {segment: 0 for segment in segments}  # logical position of the next row to ship

    def take(self, segment: int) -> tuple[dict[str, np.ndarray], int]:
        """(rows, lost): at most `batch_rows` rows of `segment` not shipped yet."""
        box = self.outbox
        cursor = int(box.committed()[segment])
        start = self.shipped[segment]
        oldest = cursor - (box.segment_size - box.write_batch)  # older ones a write may be reaching
        lost = max(0, oldest - start)
        start += lost
        end = min(cursor, start + self.batch_rows)
        if end <= start:
            self.shipped[segment] = start
            return {}, lost
        logical = np.arange(start, end)
        slots = torch.from_numpy(segment * box.segment_size + logical % box.segment_size)
        rows = {name: getattr(box, name).index_select(0, slots).numpy()
                for name in (*box.columns, "priority")}
        after = box.recheck()
        torn = overwritable(box, np.full(len(logical), segment), logical, after)
        keep = ~torn
        self.shipped[segment] = end
        if not keep.all():  # the writer lapped us while we copied: those rows are gone
            first = int(np.argmax(keep)) if keep.any() else len(keep)
            rows = {name: value[first:] for name, value in rows.items()}
            lost += first
        return rows, lost


class Shipper(threading.Thread):
    """Ships this node's outbox to the learner's agent, `in_flight` shipments at most at a time."""

    def __init__(self, reader: OutboxReader, learner_agent: Any, in_flight: int, stats: ShippingStats):
        super().__init__(name="asyncql-shipper", daemon=True)
        self.reader, self.learner_agent, self.in_flight, self.stats = reader, learner_agent, in_flight, stats
        self.stopping = threading.Event()
        self.pending: list[Any] = []
        self.error: str | None = None

    def run(self) -> None:
        import ray

        try:
            while not self.stopping.is_set():
                sent = False
                for segment in self.reader.segments:
                    rows, lost = self.reader.take(segment)
                    count = len(rows.get("action", ()))
                    if count:
                        while len(self.pending) >= self.in_flight:
                            _, self.pending = ray.wait(self.pending, num_returns=1)
                        self.pending.append(self.learner_agent.ingest.remote(segment, rows))
                        sent = True
                    with self.stats.lock:
                        self.stats.rows += count
                        self.stats.lost += lost
                        self.stats.batches += bool(count)
                if not sent:
                    time.sleep(IDLE_SECONDS)
        except Exception as exc:  # noqa: BLE001 - the learner's agent is gone: the driver handles it
            self.error = f"{type(exc).__name__}: {exc}"

    def finish(self, timeout: float) -> None:
        """Ship what is left, then stop."""
        import ray

        self.stopping.set()
        self.join(timeout)
        for segment in self.reader.segments:
            while True:
                rows, _ = self.reader.take(segment)
                if not len(rows.get("action", ())):
                    break
                self.pending.append(self.learner_agent.ingest.remote(segment, rows))
        if self.pending:
            ray.wait(self.pending, num_returns=len(self.pending), timeout=timeout)
